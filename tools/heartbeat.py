"""Runs a command, passing its output through, and says it is still at work after every ``--every`` seconds
of silence: the set-up's ``pip install`` of MONAI and its 150 dependencies is 45 s without a line here, long
enough for a newcomer to think ``make demo`` hung. Standard library only: it runs before any venv exists.

    python3 tools/heartbeat.py [--every S] "what it does" -- command [args...]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time


def run(command: list[str], doing: str, every: float = 10.0) -> int:
    """``command``'s exit code; its stdout and stderr, merged, go to stdout line by line as they come, and a
    ``doing: N s ...`` line after each ``every`` seconds in which it printed nothing."""
    start = time.monotonic()
    last, speaking = [start], threading.Lock()  # one writer at a time: no line cut into another
    try:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as e:
        print(f"{doing}: cannot run {command[0]}: {e.strerror}", file=sys.stderr)
        return 127

    def relay() -> None:
        for line in process.stdout:
            with speaking:
                sys.stdout.buffer.write(line)
                sys.stdout.buffer.flush()
                last[0] = time.monotonic()

    reader = threading.Thread(target=relay, daemon=True)
    reader.start()
    try:
        while process.poll() is None:
            try:
                process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                with speaking:
                    now = time.monotonic()
                    if now - last[0] >= every:
                        sys.stdout.buffer.write(f"{doing}: {now - start:.0f} s ...\n".encode())
                        sys.stdout.buffer.flush()
                        last[0] = now
    except KeyboardInterrupt:  # Ctrl-C reached the command too (one process group): wait for it to stop
        process.wait()
    reader.join()
    code = process.returncode
    return code if code >= 0 else 128 - code  # killed by a signal: the shell's 128 + its number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tools/heartbeat.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--every", type=float, default=10.0, help="seconds of silence before a line (10)")
    parser.add_argument("doing", help="what the command does, said in each line")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command after --")
    return run(command, args.doing, args.every)


if __name__ == "__main__":
    sys.exit(main())
