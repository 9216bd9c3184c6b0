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
    assert done.returncode == 3 and lines[0] == "first" and lines[-1] == "last", done.stdout
    beats = [line for line in lines if line.startswith("working: ")]
    assert 2 <= len(beats) <= 4 and beats[0].endswith(" s ..."), lines


def test_a_command_that_talks_gets_no_extra_line():
    done = _heartbeat("import time\nfor i in range(12): print(i, flush=True); time.sleep(0.1)")
    assert done.returncode == 0 and done.stdout.split() == [str(i) for i in range(12)]


def test_a_command_that_cannot_start_is_one_sentence():
    done = subprocess.run(
        [sys.executable, str(TOOL), "installing", "--", "/no/such/pip"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 127 and "installing: cannot run /no/such/pip: No such file" in done.stderr
    assert "Traceback" not in done.stderr
