"""How the project starts Python processes so that none imports code from its working folder, where others
may be able to write (the system temporary folder, a shared folder it was started from).

``python -m`` and ``python -c`` put their working folder first on ``sys.path``, and so do the children that
``multiprocessing`` spawns (``python -c 'from multiprocessing.spawn import ...'``, in the parent's working
folder): a package of this project's name, ``torch`` or ``multiprocessing`` there would run instead of the
installed one. ``PYTHONSAFEPATH`` (Python 3.11+; 3.10 ignores it) makes a Python add no such folder, and the
processes it starts in turn inherit it. An empty or relative ``PYTHONPATH`` entry means the working folder
too (MONAI Label 0.8.5 exports ``PYTHONPATH=:<app>``), so those are dropped; and so are those of the
``sys.path`` a spawned child takes from its parent (``''`` in a REPL or notebook, ``.`` that ``monai.bundle
run`` adds after a relative ``configs/...`` path). The Slicer module, which runs before this package is
installed, keeps its own rule (``SuperResolutionLib/runner.py``, ``private_launch``: a private working folder
as well).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager

#: the environment that keeps a started Python's working folder (and a script's) off its ``sys.path``
SAFE_PATH = {"PYTHONSAFEPATH": "1"}


def make_safe(env: MutableMapping[str, str]) -> None:
    """Set :data:`SAFE_PATH` in ``env`` and drop the empty and relative entries of its ``PYTHONPATH``."""
    env.update(SAFE_PATH)
    if "PYTHONPATH" in env:
        kept = [p for p in env["PYTHONPATH"].split(os.pathsep) if os.path.isabs(p)]
        if kept:
            env["PYTHONPATH"] = os.pathsep.join(kept)
        else:
            del env["PYTHONPATH"]


def safe_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's environment), made safe, for a ``subprocess`` that starts Python."""
    safe = dict(os.environ if env is None else env)
    make_safe(safe)
    return safe


@contextmanager
def safe_children() -> Iterator[None]:
    """This process's environment and ``sys.path`` made safe meanwhile (its empty and relative entries out), for
    the processes ``multiprocessing`` starts (spawned workers, its resource tracker), which take both as they
    are when they start; restored after."""
    before = {k: os.environ.get(k) for k in (*SAFE_PATH, "PYTHONPATH")}
    path = list(sys.path)
    make_safe(os.environ)
    sys.path[:] = [p for p in path if os.path.isabs(p)]
    try:
        yield
    finally:
        sys.path[:] = path
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def free_port() -> int:
    """A loopback port nothing listens on now, for a server this process starts (a POC federation, MONAI Label
    in the tests)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
