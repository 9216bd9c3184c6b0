"""Local mode: super-resolve an image file in a separate process running the project's ``monai-sr worker``
(``python -m monai_sr_bundle.cli worker``), so Slicer's UI stays responsive, a run can be cancelled, and a crash
or a missing dependency is a message rather than a dead Slicer (as SlicerMONAIAuto3DSeg runs its models). The
module keeps one worker for its session: it keeps the method loaded, so only the first request waits for
torch, MONAI and the weights.

"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: what the SR process imports; the module offers to pip-install the project when one is missing
MODULES = ("torch", "monai", "monai_sr_bundle")


def private_launch() -> dict:
    """``subprocess`` arguments that keep a started Python from importing what others planted: ``python -m``
    and ``-c`` put their working folder first on ``sys.path``, so the processes start in a folder only this
    user can write (made once, mode 0700), and ``PYTHONSAFEPATH`` (Python 3.11+) adds no such folder at all.
    Slicer's own working folder and the system temporary folder (anyone can write a package there) are never
    the working folder of a process started here."""
    global _PRIVATE
    if _PRIVATE is None or not os.path.isdir(_PRIVATE):
        _PRIVATE = tempfile.mkdtemp(prefix="monai-sr-")
    return {"cwd": _PRIVATE, "env": {**os.environ, "PYTHONSAFEPATH": "1"}}


_PRIVATE: str | None = None


class RunError(RuntimeError):
    """The SR process failed or was cancelled; the message is the process's own error sentence."""


def missing_dependencies(python: str = sys.executable) -> list[str]:
    """The modules of MODULES that ``python`` cannot import."""
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    try:
        done = subprocess.run(
            [python, "-c", code, *MODULES], capture_output=True, text=True, timeout=120, **private_launch()
        )
    except OSError as e:
        raise RunError(f"cannot start Python at {python} ({e.strerror}).") from e
    if done.returncode != 0:
        raise RunError(f"Python at {python} failed: {done.stderr.strip().splitlines()[-1:] or done.returncode}.")
    return done.stdout.split()


def list_methods(python: str = sys.executable) -> list[dict]:
    """The methods the project installed for ``python`` offers, as ``monai-sr methods --json`` describes them
    (name, family, trainable, stochastic, weights available, default): the module lists no names itself."""
    try:
        done = subprocess.run(
            [python, "-m", "monai_sr_bundle.cli", "methods", "--json"],
            capture_output=True,
            text=True,
            timeout=300,
            **private_launch(),
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RunError(f"cannot list the methods with {python} ({e}).") from e
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    if done.returncode != 0:
        errors = [line for line in lines if line.startswith("error:")] or lines[-1:] or [f"exit code {done.returncode}"]
        raise RunError(errors[-1].removeprefix("error:").strip())
    try:
        return json.loads(done.stdout)
    except ValueError as e:
        raise RunError(f"the method list from {python} is not JSON ({e}).") from e


class Worker:
    """One ``monai-sr worker`` process: a JSON request line in, a JSON reply line out, one request at a time.
    Started on the first request and again after it ended (cancelled, failed, or killed); :meth:`stop` ends
    it, and so does closing its stdin (Slicer quitting), since it exits at the end of its input.

    Args:
        python: the interpreter that has the project installed (in Slicer: PythonSlicer).
    """

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self.cmd = [python, "-m", "monai_sr_bundle.cli", "worker"]
        self.process: subprocess.Popen | None = None
        self.log = None  # the worker's stderr: an unnamed temporary file, read when it fails
        self.busy = False
        self._pending = b""

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def submit(self, request: dict) -> None:
        """Send ``request``, starting the process if it is not running."""
        if not self.alive():
            self.stop()
            if self.log is not None:
                self.log.close()
            self.log = tempfile.TemporaryFile()
            try:
                self.process = subprocess.Popen(
                    self.cmd,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=self.log,
                    start_new_session=True,
                    **private_launch(),
                )
            except OSError as e:
                raise RunError(f"cannot start the SR process ({e.strerror}): {self.cmd[0]}") from e
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # it ended at start (a missing module): its log says why
            raise RunError(self.failure()) from None
        self.busy = True

    def ready(self) -> bool:
        """Whether the reply (or the process's end) has arrived, without waiting."""
        ended = b"\n" not in self._pending and not self._read(0)
        return ended or b"\n" in self._pending

    def reply(self, timeout: float | None = None) -> dict | None:
        """The reply to the request sent; :class:`RunError` if the process ended first, None after ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._pending:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if not self._read(left):
                self.busy = False
                raise RunError(self.failure())
        line, self._pending = self._pending.split(b"\n", 1)
        self.busy = False
        try:
            return json.loads(line)
        except ValueError as e:
            self.stop()
            raise RunError(f"the SR worker replied something that is not JSON ({e}).") from e

    def _read(self, timeout: float | None) -> bool:
        """Read what the process wrote within ``timeout``; False once its output has ended."""
        out = self.process.stdout
        if not select.select([out], [], [], timeout)[0]:
            return True
        data = os.read(out.fileno(), 1 << 16)
        self._pending += data
        return bool(data)

    def failure(self) -> str:
        """Why the process ended: its exit code and the last line of its log (e.g. a missing module)."""
        code = self.process.wait() if self.process is not None else None
        self.stop()
        self.log.seek(0)
        lines = [line.strip() for line in self.log.read().decode(errors="replace").splitlines() if line.strip()]
        return f"the SR process ended (exit code {code})" + (f": {lines[-1]}" if lines else ".")

    def stop(self) -> None:
        """End the process and everything it started (its stdin closed first: it exits between requests). A
        request still buffered for a process that has ended cannot be delivered: closing its pipe says so with a
        BrokenPipeError, which would hide why the process ended (a process that dies at start, as one missing a
        module does, ends before or after the request is written, by chance)."""
        if self.process is not None:
            if self.process.poll() is None:
                _close(self.process.stdin)
                try:
                    self.process.wait(0 if self.busy else 5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.process.pid, signal.SIGTERM)
                    try:
                        self.process.wait(10)
                    except subprocess.TimeoutExpired:
                        os.killpg(self.process.pid, signal.SIGKILL)
                        self.process.wait()
            for pipe in (self.process.stdin, self.process.stdout):
                _close(pipe)
            self.process, self._pending, self.busy = None, b"", False


def _close(pipe) -> None:
    """Close ``pipe`` even when the bytes it still buffers cannot reach a process that has ended."""
    try:
        pipe.close()
    except BrokenPipeError:
        pass  # the file is closed all the same; what it held was for a process that is gone


class SRRun:
    """One SR run of ``input_path`` into ``output_dir`` (in-plane, slice by slice, so radiographs and CT
    take the same path).

    Args:
        input_path: an image file with no dot in its name before the extension (the module writes
            ``input.nii.gz``): the results are named after it.
        output_dir: an empty folder for the result.
        method, scale: as the CLI takes them.
        python: the interpreter that has the project installed (in Slicer: PythonSlicer).
        weights: a state dict to use instead of the method's shipped weights.
        sampler, steps, seed, samples: a stochastic method's sampling options, passed only when given (the
            worker refuses bad values and any of them for a deterministic method, as the CLI does).
        noise_level: a degradation-aware method's noise level (None: estimated from the image), refused by the
            worker for other methods.
        runtime: what runs the network (``auto``, ``torch``, ``openvino``, ``onnxruntime``; None: auto); the
            reply's ``runtime`` and ``precision`` say what did.
        max_output_mp: the largest SR result in megapixels, a volume's slices together (None: the worker's
            default, 64: a CT volume of more than ~16 slices at x4 is refused before it is read).
        worker: the session's idle :class:`Worker` to run on (kept running after the run); None: a worker
            of the run's own, stopped when the run ends.
    """

    def __init__(
        self,
        input_path: str,
        output_dir: str,
        method: str,
        scale: int = 4,
        python: str = sys.executable,
        weights: str | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        seed: int | None = None,
        samples: int | None = None,
        worker: Worker | None = None,
        noise_level: float | None = None,
        runtime: str | None = None,
        max_output_mp: float | None = None,
    ) -> None:
        self.input_path, self.output_dir = os.path.abspath(input_path), Path(output_dir).absolute()
        options = {"weights": weights, "sampler": sampler, "steps": steps, "seed": seed, "samples": samples,
                   "noise_level": noise_level, "runtime": runtime, "max_output_mp": max_output_mp}  # fmt: skip
        self.request = {"input": self.input_path, "output": str(self.output_dir), "method": method,
                        "scale": int(scale), **{k: v for k, v in options.items() if v is not None}}  # fmt: skip
        self.own_worker = worker is None
        self.worker = Worker(python) if worker is None else worker
        self.stem = Path(input_path).name.split(".")[0]
        self.started = self.cancelled = False
        self.network_started: float | None = None  # from the reply: when the network's first call began
        self.runtime: str | None = None  # from the reply: what ran the network, and in which precision
        self.precision: str | None = None

    def start(self) -> SRRun:
        self.worker.submit(self.request)
        self.started = True
        return self

    def running(self) -> bool:
        return self.started and self.worker.busy and not self.worker.ready()

    def cancel(self) -> None:
        """Stop the run and everything it started (its worker too: the next run starts another)."""
        if self.running():
            self.cancelled = True
            self.worker.stop()

    def _written(self) -> list[Path]:
        """The files the run wrote so far: ``<stem>_sr.<ext>`` and its maps ``<stem>_sr_<map>.<ext>``."""
        return sorted(p for p in self.output_dir.iterdir() if p.is_file() and p.name.startswith(f"{self.stem}_sr"))

    def _fail(self, message: str) -> RunError:
        """The error to raise, once what a failed or stopped run wrote is removed (a map without its SR,
        a half-written file)."""
        for path in self._written():
            path.unlink()
        return RunError(message)

    def wait(self, timeout: float | None = None) -> dict[str, str]:
        """The written files once the run ends, ``{"sr": SR file}`` plus, for several samples of a stochastic
        method, each map's file under its name (``{"std": ..., "lr_consistency": ...}``, as the CLI names
        them); :class:`RunError` with the worker's error if it failed, and then nothing is left written."""
        if not self.started:
            self.start()
        try:
            if self.cancelled:
                raise self._fail("SR was cancelled.")
            try:
                reply = self.worker.reply(timeout)
            except RunError as e:
                raise self._fail("SR was cancelled." if self.cancelled else str(e)) from None
            if reply is None:
                self.cancelled = True
                self.worker.stop()
                raise self._fail(f"SR took longer than {timeout:g} s and was stopped.")
        finally:
            if self.own_worker:
                self.worker.stop()
        if "error" in reply:
            raise self._fail(str(reply["error"]))
        self.network_started = reply.get("network_started")
        self.runtime, self.precision = reply.get("runtime"), reply.get("precision")
        prefix = f"{self.stem}_sr"
        results = {p.name.split(".")[0].removeprefix(prefix).lstrip("_") or "sr": str(p) for p in self._written()}
        if "sr" not in results:
            raise RunError(f"SR finished but wrote no {prefix} file to {self.output_dir}.")
        return results
