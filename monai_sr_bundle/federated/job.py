"""Build and run a federated SR job: NVFlare 2.9's ``FedAvgRecipe`` over the bundle's train config.

A job config (``configs/federated/*.json``) names the method, rounds, local epochs, minimum sites and the
sites themselves; ``sites`` maps each site name to its site config for a run on one machine, or to
``null`` when the site supplies its own (``$MONAI_SR_SITE_CONFIG`` on its machine, as in production)::

    python -m monai_sr_bundle.federated.job configs/federated/cxr_nih.json              # simulator
    python -m monai_sr_bundle.federated.job configs/federated/cxr_nih.json --export DIR  # job folder

The exported folder runs with ``nvflare simulator DIR -w WS -n <sites>`` and is submitted unchanged to a
POC or production system (``nvflare job submit -j DIR``). The global model comes out as a bundle
checkpoint (see :mod:`monai_sr_bundle.federated.controller`).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from nvflare.apis.dxo import DataKind
from nvflare.app_common.filters.percentile_privacy import PercentilePrivacy
from nvflare.app_opt.pt.recipes.fedavg import FedAvgRecipe
from nvflare.client.config import TransferType
from nvflare.recipe.sim_env import SimEnv
from nvflare.recipe.utils import set_per_site_config

from monai_sr_bundle import methods
from monai_sr_bundle.data.readers import is_intensity
from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.aggregation import RULES
from monai_sr_bundle.federated.controller import INITIAL_MODEL, REPORT_NAME, SRFedAvg
from monai_sr_bundle.hashing import sha256
from monai_sr_bundle.jsonfile import read_json_object

CLIENT_SCRIPT = Path(__file__).with_name("client.py")
#: the server's app folder inside a simulator job workspace
SERVER_APP = Path("server") / "simulate_job" / "app_server"
REQUIRED = object()
#: job config keys and their defaults
JOB_KEYS = {
    "name": REQUIRED,
    "method": REQUIRED,
    "modality": "cxr",
    "scale": 4,
    "intensity": None,
    "num_rounds": 2,
    "local_epochs": 1,
    "min_clients": 1,
    "initial_weights": None,
    "box_weight": 0.0,
    "batch_size": None,
    "privacy": None,
    "wait_after_min_s": 1800,
    "round_timeout_s": 86400,
    "seed": 0,
    "aggregation": "mean",
    "max_update_ratio": 10.0,
    "max_weight_ratio": 4.0,
    "sites": REQUIRED,
}
#: NVFlare's PercentilePrivacy defaults: share only the diffs above the 10th percentile, clipped to 0.01 per step
PRIVACY_DEFAULTS = {"percentile": 10, "gamma": 0.01}


def load_job_config(path: str | os.PathLike, **overrides) -> dict:
    """The job config at ``path`` with ``overrides`` (None values ignored), checked; site config and initial
    weights paths are made absolute from the job config's folder."""
    path = Path(path)
    config = read_json_object(path, f"{path}: the job config", JOB_KEYS)
    config = {**JOB_KEYS, **config, **{k: v for k, v in overrides.items() if v is not None}}
    missing = [k for k, v in config.items() if v is REQUIRED]
    if missing:
        raise InputError(f"{path}: missing {', '.join(missing)}.")
    if config["method"] not in methods.trainable_names():
        raise InputError(
            f"{path}: method {config['method']!r} cannot be trained; use one of {', '.join(methods.trainable_names())}."
        )
    sites = config["sites"]
    if not isinstance(sites, dict) or not sites:
        raise InputError(f"{path}: 'sites' must map each site name to its site config (or null).")
    config["sites"] = {s: None if c is None else str((path.parent / c).resolve()) for s, c in sites.items()}
    if config["initial_weights"] not in (None, "shipped"):
        if not isinstance(config["initial_weights"], str):
            raise InputError(
                f"{path}: initial_weights must be null, 'shipped' or a file, got {config['initial_weights']!r}."
            )
        config["initial_weights"] = str((path.parent / config["initial_weights"]).resolve())
    for key in ("num_rounds", "local_epochs", "min_clients", "scale") + (
        ("batch_size",) if config["batch_size"] is not None else ()
    ):
        if not isinstance(config[key], int) or config[key] < 1:
            raise InputError(f"{path}: {key} must be a positive integer, got {config[key]!r}.")
    if config["intensity"] is not None and not is_intensity(config["intensity"]):
        raise InputError(
            f'{path}: intensity must be "minmax" or a [lo, hi] window in modality units (lo < hi), '
            f"got {config['intensity']!r}."
        )
    if config["aggregation"] not in RULES:
        raise InputError(f"{path}: aggregation must be one of {', '.join(RULES)}, got {config['aggregation']!r}.")
    for key, least in (
        ("wait_after_min_s", 0),
        ("round_timeout_s", 1),
        ("box_weight", 0),
        ("max_update_ratio", 1),
        ("max_weight_ratio", 1),
    ):
        value = config[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not least <= value < float("inf"):
            raise InputError(f"{path}: {key} must be a number of at least {least}, got {value!r}.")
    if isinstance(config["seed"], bool) or not isinstance(config["seed"], int) or config["seed"] < 0:
        raise InputError(f"{path}: seed must be an integer of at least 0, got {config['seed']!r}.")
    try:
        method = methods.get(config["method"], config["scale"], config["modality"])
        if config["intensity"] is None:  # the one the method's weights were trained with, or its modality's
            config["intensity"] = method.intensity
        init = initial_weights_file(config, method)
        if init is not None:
            method.network(init)  # the file exists, loads with weights_only and fits the network
    except InputError as e:
        raise InputError(f"{path}: {e}") from e
    if config["min_clients"] > len(sites):
        raise InputError(f"{path}: min_clients is {config['min_clients']} but only {len(sites)} site(s) are listed.")
    privacy = config["privacy"]
    if privacy is True:
        privacy = dict(PRIVACY_DEFAULTS)
    elif isinstance(privacy, dict):
        privacy = {**PRIVACY_DEFAULTS, **privacy}
        if set(privacy) != set(PRIVACY_DEFAULTS) or not all(isinstance(v, (int, float)) for v in privacy.values()):
            raise InputError(
                f"{path}: privacy takes numbers for {' and '.join(PRIVACY_DEFAULTS)} only, got {config['privacy']!r}."
            )
    elif privacy not in (None, False):
        raise InputError(f'{path}: privacy must be null, true or {{"percentile": p, "gamma": g}}, got {privacy!r}.')
    config["privacy"] = privacy or None
    return config


def client_args(config: dict, site_config: str | None, threads: int = 0) -> str:
    """Command-line arguments of :mod:`monai_sr_bundle.federated.client` for one site. NVFlare splits them
    on whitespace with no shell quoting, so no argument may contain any (a HU window is written ``[-1000,400]``)."""
    window = config["intensity"]
    args = [
        "--method",
        config["method"],
        "--scale",
        str(config["scale"]),
        "--modality",
        config["modality"],
        "--intensity",
        window if window == "minmax" else json.dumps(window, separators=(",", ":")),
        "--local_epochs",
        str(config["local_epochs"]),
        "--box_weight",
        str(config["box_weight"]),
    ]
    if site_config:
        args += ["--site_config", site_config]
    if config["batch_size"]:
        args += ["--batch_size", str(config["batch_size"])]
    if threads:
        args += ["--threads", str(threads)]
    spaced = [a for a in args if not a or any(c.isspace() for c in a)]
    if spaced:
        raise InputError(
            f"{spaced[0]!r}: NVFlare passes the site's arguments split on whitespace; use a path without spaces."
        )
    return " ".join(args)


class SRFedAvgRecipe(FedAvgRecipe):
    """NVFlare's PyTorch FedAvg recipe with :class:`SRFedAvg` as its controller. ``monai_sr_bundle`` is an
    installed package at every site, so the job folder carries only the client script, not partial copies
    of the package's modules (which would shadow the installed one and lack its configs and weights)."""

    def __init__(self, *, controller_args: dict, **kwargs) -> None:
        self.controller_args = controller_args
        super().__init__(**kwargs)
        self._job.set_app_packages(["monai_sr_bundle"])

    def _create_controller(self, persistor_id, model_params, model_aggregator) -> SRFedAvg:
        return SRFedAvg(
            num_clients=self.min_clients,
            num_rounds=self.num_rounds,
            persistor_id=persistor_id,
            model=model_params,
            aggregator=model_aggregator,
            task_name="train",
            **self.controller_args,
        )


def initial_weights_file(config: dict, method: methods.Method) -> str | os.PathLike | None:
    """The file of the job's ``initial_weights`` (``"shipped"``: the method's own), or None."""
    return method.weights_path if config["initial_weights"] == "shipped" else config["initial_weights"]


def initial_state(config: dict) -> dict:
    """The round-0 global model of a checked job config: its initial weights, or a fresh network drawn from
    its ``seed``, so that every run of the job, on any machine, starts from the same model."""
    method = methods.get(config["method"], config["scale"], config["modality"])
    init = initial_weights_file(config, method)
    if init is not None:
        return method.network(init).state_dict()
    with torch.random.fork_rng():
        torch.manual_seed(config["seed"])
        return method.network().state_dict()


@contextmanager
def _recipe(config: dict, threads: int = 0, command: str = ""):
    """The recipe of a checked job config, built from the client script's folder (NVFlare names the script
    relative to the working folder and a site finds it by that name in the job's ``custom`` folder; an
    absolute path would have to exist on every site's machine), its round-0 model in a temporary file that
    exporting or running the recipe copies into the job. NVFlare places such a file in ``custom`` by its path
    relative to the longest ``sys.path`` entry that holds it (``/tmp`` when a script there runs): the
    temporary folder is put first on ``sys.path`` meanwhile, so the model is always ``custom/initial_model.pt``."""
    previous = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="monai_sr_job_") as tmp:
        initial = Path(tmp) / INITIAL_MODEL
        torch.save(initial_state(config), initial)
        os.chdir(CLIENT_SCRIPT.parent)
        sys.path.insert(0, tmp)
        try:
            yield build_recipe(config, initial, threads, command)
        finally:
            sys.path.remove(tmp)
            os.chdir(previous)


def export_job(config: dict, job_dir: str | os.PathLike, command: str = "") -> Path:
    """Write the job folder of a checked job config, for ``nvflare simulator``, POC or production."""
    job_dir = Path(job_dir).resolve()
    with _recipe(config, command=command) as recipe:
        recipe.export(str(job_dir))
    return job_dir / config["name"]


def build_recipe(config: dict, initial_model: Path, threads: int = 0, command: str = "") -> SRFedAvgRecipe:
    """The FedAvg recipe of a checked job config (:func:`load_job_config`) starting from the state dict file
    ``initial_model``; ``command`` is recorded as the global model's provenance."""
    scale, modality = config["scale"], config["modality"]
    method = methods.get(config["method"], scale, modality)
    init = config["initial_weights"]
    provenance = {
        "command": command,
        "job": config["name"],
        "data": "federated: each site's own datalist (none left its site)",
        "scale": scale,
        "modality": modality,
        "intensity": config["intensity"],
        "rounds": config["num_rounds"],
        "local_epochs": config["local_epochs"],
        "initial_weights": init if init in (None, "shipped") else f"{Path(init).name} (sha256 {sha256(init)})",
        "seed": config["seed"],
        "privacy": config["privacy"],
    }

    recipe = SRFedAvgRecipe(
        controller_args={
            "min_responses": config["min_clients"],
            "wait_after_min_s": config["wait_after_min_s"],
            "round_timeout_s": config["round_timeout_s"],
            "weights_name": method.weights_name,
            "provenance": provenance,
            "sites": list(config["sites"]),
            "aggregation": config["aggregation"],
            "max_update_ratio": config["max_update_ratio"],
            "max_weight_ratio": config["max_weight_ratio"],
        },
        name=config["name"],
        model=method.network_spec(),
        min_clients=config["min_clients"],
        num_rounds=config["num_rounds"],
        train_script=CLIENT_SCRIPT.name,
        train_args=client_args(config, None, threads),
        key_metric="psnr",
        params_transfer_type=TransferType.DIFF if config["privacy"] else TransferType.FULL,
    )
    recipe.add_server_file(str(initial_model))
    set_per_site_config(
        recipe, {s: {"train_args": client_args(config, c, threads)} for s, c in config["sites"].items()}
    )
    if config["privacy"]:
        privacy = PercentilePrivacy(data_kinds=[DataKind.WEIGHT_DIFF], **config["privacy"])
        recipe.add_client_output_filter(privacy, tasks=["train"])
    return recipe


def run_simulation(config: dict, workspace: str | os.PathLike, threads: int | None = None, command: str = "") -> Path:
    """Run the job in NVFlare's simulator, all sites on this machine; returns the server's app folder
    (global model under ``models/``, ``fl_report.json``)."""
    sites = list(config["sites"])
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // len(sites))
    workspace = Path(workspace).resolve()
    # one simulator thread for all sites, which take their turns: with a thread per site, NVFlare 2.9's
    # simulator now and then starts a site's executor before that site's app is in place ("Can not find
    # client.py") and the round waits for a site that never runs; each site trains in a worker process of its
    # own either way
    env = SimEnv(clients=sites, num_threads=1, workspace_root=str(workspace))
    job_dir = workspace / config["name"]
    try:
        with _recipe(config, threads, command) as recipe:
            recipe.run(env)
    except RuntimeError as e:  # the simulator's exit status; which sites failed is in the server's report
        report = job_dir / SERVER_APP / REPORT_NAME
        rounds = json.loads(report.read_text())["rounds"] if report.is_file() else []
        failed = sorted({site for r in rounds for site in r["failed"]})
        raise InputError(
            f"job {config['name']} stopped"
            + (f": site(s) {', '.join(failed)} failed" if failed else "")
            + f"; each site's reason is in its own log, {job_dir}/<site>/log.txt."
        ) from e
    return job_dir / SERVER_APP


def main(argv=None) -> int:
    cli = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    cli.add_argument("job_config", help="configs/federated/<job>.json")
    cli.add_argument("--workspace", default="out/federated", help="simulator workspace (default out/federated)")
    cli.add_argument("--export_dir", default=None, help="write the job folder here instead of running it")
    cli.add_argument("--num_rounds", type=int)
    cli.add_argument("--local_epochs", type=int)
    cli.add_argument("--min_clients", type=int)
    cli.add_argument(
        "--privacy", action="store_true", default=None, help="attach PercentilePrivacy to the sites' results"
    )
    cli.add_argument("--threads", type=int, default=None, help="torch threads per simulated site")
    args = cli.parse_args(argv)
    command = shlex.join(
        ["python", "-m", "monai_sr_bundle.federated.job", *(argv if argv is not None else sys.argv[1:])]
    )
    try:
        config = load_job_config(
            args.job_config,
            num_rounds=args.num_rounds,
            local_epochs=args.local_epochs,
            min_clients=args.min_clients,
            privacy=args.privacy,
        )
        if args.export_dir:
            print(f"job folder: {export_job(config, args.export_dir, command)}")
            return 0
        app = run_simulation(config, Path(args.workspace).resolve(), args.threads, command)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"global model: {app / 'models'}\nreport: {app / 'fl_report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
