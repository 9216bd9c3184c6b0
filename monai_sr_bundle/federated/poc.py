"""A POC federation on one machine: the server and each site as their own processes, started from the kits
of :func:`monai_sr_bundle.federated.deploy.prepare_poc`, a job submitted, awaited and downloaded through
NVFlare's admin API, everything stopped by process group at the end. The tests and the fault benchmark
run it; a hospital's IT runs the same kits with ``startup/start.sh``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from monai_sr_bundle.errors import InputError
from monai_sr_bundle.federated.deploy import ADMIN_KIT, SERVER_KIT, prepare_poc, python_first
from monai_sr_bundle.federated.sites import SITE_CONFIG_ENV
from monai_sr_bundle.launch import free_port, safe_env


class LocalPoc:
    """The job's POC federation in ``workspace``; use as a context manager (everything is stopped on exit).

    Args:
        config: a checked job config; its ``sites`` map each site to the site config it is started with.
        workspace: the POC workspace (kits, job store, each site's run folders).
        python: the Python whose environment runs the server and the sites (default: this one).
    """

    def __init__(self, config: dict, workspace: str | os.PathLike, python: str = sys.executable) -> None:
        self.config = config
        self.workspace = Path(workspace).resolve()
        self.port = free_port()
        self.python = python
        self.kits = prepare_poc(config, self.workspace, port=self.port, python=python)
        self.processes: dict[str, subprocess.Popen] = {}
        self.session = None

    def start(self, name: str) -> None:
        """Start the server or one site (``sub_start.sh --once``: no restart loop), in its own process group;
        a site gets its site config from the job config as its ``MONAI_SR_SITE_CONFIG``. The kit's ``python3 -m``
        runs in the kit folder, which must not be on its path (:mod:`monai_sr_bundle.launch`)."""
        env = safe_env(python_first(python=self.python))
        site_config = self.config["sites"].get(name)
        if site_config:
            env[SITE_CONFIG_ENV] = str(site_config)
        log = open(self.kits / name / "process.log", "ab")
        self.processes[name] = subprocess.Popen(
            ["bash", str(self.kits / name / "startup" / "sub_start.sh"), "--once"],
            cwd=self.kits / name,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def stop(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Stop a process and everything it started: its process group, and its descendants that NVFlare
        started in sessions of their own (the job processes, their workers), which outlived it by ~40 s."""
        import psutil

        process = self.processes.pop(name, None)
        if process is None:
            return
        if name == SERVER_KIT:  # the admin session dies with the server
            self._close_session()
        try:
            descendants = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        for child in descendants:
            try:
                child.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        process.wait(30)
        psutil.wait_procs(descendants, timeout=30)

    def connect(self, sites: list[str] | None = None, timeout: float = 120):
        """An admin session once the server answers and ``sites`` (default: all started) are connected."""
        from nvflare.fuel.flare_api.flare_api import new_secure_session

        sites = [s for s in self.processes if s != SERVER_KIT] if sites is None else sites
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.session is None:
                    self.session = new_secure_session(ADMIN_KIT, str(self.kits / ADMIN_KIT), timeout=10)
                connected = self.connected()
                if set(sites) <= connected:
                    return self.session
            except Exception as e:  # the server is still starting: the admin API raises several kinds
                if time.monotonic() > deadline:
                    raise InputError(f"the POC server on port {self.port} did not answer: {e}") from e
            if time.monotonic() > deadline:
                raise InputError(f"site(s) {', '.join(sorted(set(sites) - connected))} did not connect.")
            time.sleep(1)

    def connected(self) -> set[str]:
        """The sites the server counts as connected now (through the open admin session)."""
        return {c.name for c in self.session.get_system_info().client_info}

    def wait(self, job_id: str, timeout: float) -> str:
        """The job's status once it is ``FINISHED:...``, or whatever it is after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            status = str(self.connect(sites=[]).get_job_meta(job_id).get("status", ""))
            if status.startswith("FINISHED") or time.monotonic() > deadline:
                return status
            time.sleep(1)

    def run_job(self, job_dir: str | os.PathLike, timeout: float = 600) -> tuple[str, Path]:
        """Submit the exported job, wait for it and download its results; returns (final status, folder)."""
        return self.result(self.submit(job_dir), timeout)

    def submit(self, job_dir: str | os.PathLike) -> str:
        """Submit the exported job and return its id at once: the server runs jobs side by side (up to its
        ``max_jobs``), a site taking part in several of them."""
        return self.connect(sites=[]).submit_job(str(job_dir))

    def result(self, job_id: str, timeout: float = 600) -> tuple[str, Path]:
        """Wait for a submitted job and download its results; returns (final status, folder)."""
        session = self.connect(sites=[])
        status = self.wait(job_id, timeout)
        if not status.startswith("FINISHED"):
            session.abort_job(job_id)
            raise InputError(f"job {job_id} did not finish within {timeout:.0f} s (status {status}).")
        return status, Path(session.download_job_result(job_id))

    def _close_session(self) -> None:
        if self.session is not None:
            try:
                self.session.close()
            except Exception:  # the server may already be gone; closing is best effort
                pass
            self.session = None

    def close(self) -> None:
        self._close_session()
        for name in list(self.processes):
            self.stop(name)

    def __enter__(self) -> LocalPoc:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
