"""Startup kits that run this project's jobs as shipped, for NVFlare's POC mode or a provisioned project:
what the server and the sites need is written into their kits here, never edited by hand.

- The job's component classes go on each kit's ``class_allow_list`` (``local/resources.json``): NVFlare
  refuses any other class (``ComponentNotAuthorized``), our controller and the PyTorch persistor included.
  The list comes from a real export of the job, so it names exactly what the job runs.
- A site keeps its ``error_log.txt`` (``allow_log_streaming: false``): by default NVFlare uploads it to the
  server, with the site's image paths and tracebacks in it.
- The server listens on the given host (loopback unless told otherwise) instead of all interfaces, on the
  given port, and the sites and the admin kit connect there.
- The server ends the jobs it was running when it stopped, with their last published model downloadable,
  and disables a site name that two clients use (:mod:`monai_sr_bundle.federated.watch`).
- ``startup/sub_start.sh`` runs ``python3`` from ``PATH``: the Python that has ``monai_sr_bundle`` is put
  first on it.

::

    python -m monai_sr_bundle.federated.deploy poc configs/federated/cxr_nih.json --workspace /srv/poc
    python -m monai_sr_bundle.federated.deploy kit configs/federated/cxr_nih.json prod_00/hospital-a

A site's own data stays where its ``MONAI_SR_SITE_CONFIG`` points (:mod:`monai_sr_bundle.federated.sites`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated import watch
from monai_sr_bundle.federated.job import export_job, load_job_config

#: the POC project's name and the folder ``nvflare poc prepare`` writes the kits to
POC_PROJECT = Path("example_project") / "prod_00"
SERVER_KIT = "server"
ADMIN_KIT = "admin@nvidia.com"
#: the server's watchers (:mod:`monai_sr_bundle.federated.watch`) by their component ids
WATCHERS = {
    f"monai_sr_{c.__name__}": f"{watch.__name__}.{c.__name__}"
    for c in (watch.InterruptedJobs, watch.DuplicateSiteNames)
}


def python_first(env: dict | None = None, python: str = sys.executable) -> dict:
    """``env`` (default: this process's) with the folder of ``python`` (default: this one) first on ``PATH``, once."""
    env = dict(os.environ if env is None else env)
    folder = str(Path(python).parent)
    parts = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != folder]
    env["PATH"] = os.pathsep.join([folder, *parts])
    return env


def _component_classes(node) -> set[str]:
    """Every ``path`` of a component (nested ones included) in an NVFlare app config."""
    found = set()
    if isinstance(node, dict):
        if isinstance(node.get("path"), str) and "." in node["path"]:
            found.add(node["path"])
        for value in node.values():
            found |= _component_classes(value)
    elif isinstance(node, list):
        for value in node:
            found |= _component_classes(value)
    return found


def job_classes(config: dict) -> dict[str, list[str]]:
    """The component classes the server and the sites build for the checked job config ``config``, read
    from its export: ``{"server": [...], "client": [...]}``."""
    with tempfile.TemporaryDirectory(prefix="monai_sr_classes_") as tmp:
        job = export_job(config, tmp)
        classes = {"server": set(), "client": set()}
        for role in classes:
            for path in job.glob(f"app_*/config/config_fed_{role}.json"):
                classes[role] |= _component_classes(json.loads(path.read_text()))
    return {role: sorted(names) for role, names in classes.items()}


def _resources(kit: Path) -> tuple[Path, dict]:
    local = kit / "local"
    source = local / "resources.json"
    if not source.is_file():
        source = local / "resources.json.default"
    if not source.is_file():
        raise InputError(f"{kit}: not an NVFlare startup kit (no local/resources.json.default).")
    return local / "resources.json", json.loads(source.read_text())


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _is_server(kit: Path) -> bool:
    return (kit / "startup" / "fed_server.json").is_file()


def prepare_kit(
    kit: str | os.PathLike,
    classes: dict[str, list[str]],
    host: str,
    port: int | None = None,
    python: str = sys.executable,
) -> Path:
    """Set up one startup kit (server, site or admin) for the job whose classes are ``classes``; the
    server listens on ``host`` (and ``port`` when given), the others connect there; the kit's processes run
    in the environment of ``python`` (default: this one), which has monai_sr_bundle."""
    kit = Path(kit)
    startup = kit / "startup"
    if (startup / "fed_admin.json").is_file():
        admin = json.loads((startup / "fed_admin.json").read_text())
        admin["admin"]["host"] = host
        admin["admin"]["port"] = port or admin["admin"]["port"]
        _write_json(startup / "fed_admin.json", admin)
        return kit
    target, resources = _resources(kit)
    role = "server" if _is_server(kit) else "client"
    resources["class_allow_list"] = sorted(set(resources.get("class_allow_list", [])) | set(classes[role]))
    if role == "client":
        resources["allow_log_streaming"] = False
    else:
        components = [c for c in resources.get("components", []) if c.get("id") not in WATCHERS]
        resources["components"] = components + [{"id": i, "path": p, "args": {}} for i, p in WATCHERS.items()]
        resources["class_allow_list"] = sorted(set(resources["class_allow_list"]) | set(WATCHERS.values()))
    _write_json(target, resources)
    config_name = "fed_server.json" if role == "server" else "fed_client.json"
    config = json.loads((startup / config_name).read_text())
    for server in config["servers"]:
        port = port or int(server["service"]["target"].rsplit(":", 1)[1])
        server["service"]["target"] = f"{host}:{port}"
        if role == "server":
            server["admin_server"], server["admin_port"] = host, port
    _write_json(startup / config_name, config)
    script = startup / "sub_start.sh"
    lines = script.read_text().splitlines(keepends=True)
    put_first = f'export PATH="{Path(python).parent}:$PATH"  # monai-sr: the Python that has monai_sr_bundle\n'
    if put_first not in lines:
        script.write_text("".join(lines[:1] + [put_first] + lines[1:]))
    return kit


def prepare_poc(
    config: dict,
    workspace: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8002,
    env: dict | None = None,
    python: str = sys.executable,
) -> Path:
    """``nvflare poc prepare`` for the job's sites in ``workspace``, then every kit set up for the job (its
    processes in the environment of ``python``); returns the folder that holds the kits (``server``, the
    sites, ``admin@nvidia.com``)."""
    workspace = Path(workspace).resolve()
    env = {**python_first(env, python), "NVFLARE_POC_WORKSPACE": str(workspace)}
    command = [str(Path(python).with_name("nvflare")), "poc", "prepare", "--force", "-c", *config["sites"]]
    run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    if run.returncode:
        raise InputError(f"nvflare poc prepare failed in {workspace}: {(run.stderr or run.stdout).strip()[-500:]}")
    kits = workspace / POC_PROJECT
    classes = job_classes(config)
    for kit in [SERVER_KIT, ADMIN_KIT, *config["sites"]]:
        prepare_kit(kits / kit, classes, host, port, python)
    return kits


def main(argv=None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = cli.add_subparsers(dest="command", required=True)
    poc = sub.add_parser("poc", help="prepare a POC workspace (server, the job's sites, an admin) on one machine")
    poc.add_argument("job_config")
    poc.add_argument("--workspace", required=True)
    kit = sub.add_parser("kit", help="set up one provisioned startup kit (server, site or admin) for the job")
    kit.add_argument("job_config")
    kit.add_argument("kit")
    for p in (poc, kit):
        p.add_argument("--host", default="127.0.0.1", help="the server's address (default: loopback)")
        p.add_argument("--port", type=int, default=None, help="the server's port (default: the kit's own)")
    args = cli.parse_args(argv)
    try:
        config = load_job_config(args.job_config)
        if args.command == "poc":
            kits = prepare_poc(config, args.workspace, args.host, args.port or 8002)
        else:
            kits = prepare_kit(args.kit, job_classes(config), args.host, args.port)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"ready: {kits}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
