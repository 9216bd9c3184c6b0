"""``tools/heartbeat.py``: the set-up's ``pip install`` (45 s without a line here) says it is at work, and
passes through what the command prints and its exit code."""

import subprocess
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "heartbeat.py"


def _heartbeat(code: str, every: float = 0.4) -> subprocess.CompletedProcess:
    command = [sys.executable, str(TOOL), "--every", str(every), "working", "--", sys.executable, "-c", code]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_a_silence_gets_a_line_and_the_commands_output_and_exit_code_pass_through():
    done = _heartbeat(
        "import sys, time; print('first', flush=True); time.sleep(1.5); print('last', file=sys.stderr); sys.exit(3)"
    )
    lines = done.stdout.splitlines()
    said = [line for line in lines if not line.startswith("working: ")]
    assert done.returncode == 3 and said == ["first", "last"], done.stdout
    beats = lines[lines.index("first") + 1 : lines.index("last")]  # in the 1.5 s of silence
    assert 2 <= len(beats) <= 4 and beats[0].endswith(" s ..."), lines


def test_a_command_that_talks_gets_no_extra_line():
    """2.5 s of a line every 0.1 s: longer than a beat's 1 s of silence, which each line starts again."""
    done = _heartbeat("import time\nfor i in range(25): print(i, flush=True); time.sleep(0.1)", every=1.0)
    assert done.returncode == 0 and done.stdout.split() == [str(i) for i in range(25)]


def test_a_command_killed_by_a_signal_exits_as_a_shell_says_it():
    done = _heartbeat("import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert done.returncode == 128 + 15


def test_a_command_that_cannot_start_is_one_sentence():
    done = subprocess.run(
        [sys.executable, str(TOOL), "installing", "--", "/no/such/pip"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 127 and "installing: cannot run /no/such/pip: No such file" in done.stderr
    assert "Traceback" not in done.stderr
