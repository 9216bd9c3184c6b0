"""The preloaded Python that the suite forks its MONAI Label servers from (tools/preloaded.py): a script runs
there as ``python SCRIPT ARGS`` runs it, and a server that cannot start is reported with its log."""

from __future__ import annotations

import json
import os

import pytest

from tools.label_server import label_server

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os, sys, tempfile
import helper  # beside the script: its folder is first on the path
print(json.dumps({"argv": sys.argv, "cwd": os.getcwd(), "path0": sys.path[0], "env": os.environ.get("ONLY_HERE"),
                  "tmp": tempfile.gettempdir(), "session": os.getsid(0) == os.getpid(), "helper": helper.NAME}))
print("to stderr", file=sys.stderr)
sys.exit(3)
"""


def test_a_script_runs_as_python_runs_it_in_its_own_session(preloaded, tmp_path):
    folder, cwd, tmp = tmp_path / "app", tmp_path / "cwd", tmp_path / "tmp"
    for f in (folder, cwd, tmp):
        f.mkdir()
    (folder / "script.py").write_text(SCRIPT)
    (folder / "helper.py").write_text("NAME = 'helper'\n")
    env = {**os.environ, "ONLY_HERE": "yes", "TMPDIR": str(tmp)}
    process = preloaded.run([str(folder / "script.py"), "a", "b"], env, cwd, tmp_path / "log")
    assert process.wait(60) == 3
    said, err = (tmp_path / "log").read_text().splitlines()
    assert json.loads(said) == {
        "argv": [str(folder / "script.py"), "a", "b"],
        "cwd": str(cwd),
        "path0": str(folder),
        "env": "yes",
        "tmp": str(tmp),
        "session": True,
        "helper": "helper",
    }
    assert err == "to stderr" and "ONLY_HERE" not in os.environ


def test_a_server_that_cannot_start_is_reported_with_its_log(preloaded, tmp_path):
    studies = tmp_path / "studies"
    studies.mkdir()
    with pytest.raises(RuntimeError, match="(?s)MONAI Label server exited.*unrecognized arguments: --no_such"):
        with label_server(tmp_path, studies, {"method": "bicubic"}, ("--no_such",), preloaded=preloaded):
            pass
