"""A real MONAI Label server running this project's app, for tests and benchmarks: started from a copy of
the app in a temporary folder (MONAI Label writes logs, model and bin folders into its app), on a free
loopback port, and stopped by its process id."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from monai_sr_bundle.launch import free_port
from tools.preloaded import Preloaded

APP = Path(__file__).resolve().parents[1] / "monailabel_app"


def listening_pid(port: int) -> int:
    """The id of the process listening on ``port`` of this machine (a forked server's command line is its
    preloaded interpreter's, not ``serve.py``)."""
    import psutil

    return next(c.pid for c in psutil.net_connections("tcp") if c.status == "LISTEN" and c.laddr.port == port)


@contextmanager
def label_server(
    root: Path,
    studies: Path,
    conf: dict[str, str],
    options: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    ready_status: int = 200,
    timeout: float = 90,
    cwd: Path | None = None,
    preloaded: Preloaded | None = None,
) -> Iterator[str]:
    """Run the app through its launcher on ``studies`` with ``--conf`` pairs ``conf``, other launcher
    ``options`` and extra environment ``env``; yields its URL once ``/info/`` answers ``ready_status``.
    ``root`` receives the app copy and the server log; ``cwd``: the server's working folder (default: this one);
    ``preloaded``: fork the server from that interpreter (torch and MONAI imported) rather than start one."""
    app = root / "app"
    shutil.copytree(APP, app, ignore=shutil.ignore_patterns("logs", "model", "bin", "tmp", "__pycache__"))
    port, log_path = free_port(), root / "server.log"
    cmd = [sys.executable, str(app / "serve.py"), "--studies", str(studies), "--port", str(port), *options]
    for key, value in conf.items():
        cmd += ["--conf", key, str(value)]
    env = {**os.environ, **(env or {})}
    url = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        if preloaded is None:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True)
        else:
            proc = preloaded.run(cmd[1:], env, cwd or os.getcwd(), log_path)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError("MONAI Label server exited:\n" + log_path.read_text()[-3000:])
                try:
                    if requests.get(f"{url}/info/", timeout=2).status_code == ready_status:
                        break
                except (requests.ConnectionError, requests.Timeout):  # not listening yet, or busy starting up
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"MONAI Label server did not answer in {timeout:g} s:\n" + log_path.read_text()[-3000:]
                    )
                time.sleep(0.5)
            yield url
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:  # it exited, and nothing it started is left: what it said is raised
                pass
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
