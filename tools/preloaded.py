"""A preloaded Python for the tests' servers: one interpreter imports torch and MONAI once (9-15 s of CPU here),
then forks a process per script it is asked to run, as ``python SCRIPT ARGS`` would run it: in its own session,
with the environment, working folder, arguments, ``sys.path[0]`` and log it is given, less those imports. A MONAI
Label server of the suite starts in about 1 s of CPU this way instead of 12-20.

Nothing of MONAI Label, this project or the script is imported before the fork: MONAI Label reads its settings
from the environment when ``monailabel.config`` is imported, and the script's folder comes first on its path.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

#: what MONAI Label's start imports first (``monailabel.main`` -> ``monai.apps`` ...), and most of its time
PRELOAD = ("torch", "monai", "monai.apps", "monai.bundle", "monai.handlers")


class Preloaded:
    """The client: starts the preloaded interpreter (this file, run by ``python``) and asks it to run scripts."""

    def __init__(self, python: str = sys.executable) -> None:
        self._zygote = subprocess.Popen([python, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self._reply() != {"ready": True}:
            raise RuntimeError(f"the preloaded Python ({python} {__file__}) did not start")

    def run(self, argv: list[str], env: dict[str, str], cwd: str | os.PathLike, log: str | os.PathLike) -> Forked:
        """``argv`` (a script and its arguments) in a new process writing stdout and stderr to ``log``."""
        self._zygote.stdin.write(json.dumps({"run": argv, "env": env, "cwd": str(cwd), "log": str(log)}) + "\n")
        self._zygote.stdin.flush()
        return Forked(self, self._reply()["pid"], argv)

    def status(self, pid: int) -> int | None:
        """The exit code of a process it started (``-N``: killed by signal N), None while it runs."""
        self._zygote.stdin.write(json.dumps({"poll": pid}) + "\n")
        self._zygote.stdin.flush()
        return self._reply()["status"]

    def _reply(self) -> dict:
        line = self._zygote.stdout.readline()
        if not line:
            raise RuntimeError(f"the preloaded Python exited with {self._zygote.wait()}")
        return json.loads(line)

    def close(self) -> None:
        self._zygote.stdin.close()  # its loop ends at the end of its input
        self._zygote.wait(30)

    def __enter__(self) -> Preloaded:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Forked:
    """A process :class:`Preloaded` started: ``pid``, ``poll`` and ``wait`` as :class:`subprocess.Popen` has."""

    def __init__(self, owner: Preloaded, pid: int, argv: list[str]) -> None:
        self.owner, self.pid, self.args = owner, pid, argv

    def poll(self) -> int | None:
        return self.owner.status(self.pid)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(self.args, timeout)
            time.sleep(0.05)
        return code


def _serve() -> None:
    """The preloaded interpreter's loop: a JSON request a line on stdin, a JSON answer a line on stdout."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    finished: dict[int, int] = {}
    _answer({"ready": True})
    for line in sys.stdin:
        request = json.loads(line)
        if "poll" in request:
            pid = request["poll"]
            if pid not in finished:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    finished[pid] = os.waitstatus_to_exitcode(status)
            _answer({"status": finished.get(pid)})
        else:
            _answer({"pid": _fork(**request)})


def _answer(reply: dict) -> None:
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


def _fork(run: list[str], env: dict[str, str], cwd: str, log: str) -> int:
    """The new process's id, once it leads its own session (``os.killpg`` with its id reaches all it starts);
    the process itself never returns (:func:`_become`)."""
    ready, told = os.pipe()
    pid = os.fork()
    if pid:
        os.close(told)
        os.read(ready, 1)
        os.close(ready)
        return pid
    os.close(ready)
    os.setsid()
    os.write(told, b".")
    os.close(told)
    _become(run, env, cwd, log)


def _become(run: list[str], env: dict[str, str], cwd: str, log: str) -> None:
    """In the forked process: what ``python SCRIPT ARGS`` in ``cwd`` with ``env`` and its output in ``log``
    would be, then its exit (``sys.exit``: atexit handlers and non-daemon threads as in any interpreter)."""
    import runpy
    import tempfile

    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(out)
    sys.stdin = open(os.devnull)  # not the request pipe's reader, which may hold the next requests
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # found again from TMPDIR, as a new interpreter finds it
    sys.argv = list(run)
    sys.path[0] = str(Path(run[0]).resolve().parent)
    runpy.run_path(run[0], run_name="__main__")
    sys.exit(0)


if __name__ == "__main__":
    _serve()
