"""Local mode: super-resolve an image file in a separate process running the project's CLI
(``python -m monai_sr_bundle.cli sr``), so Slicer's UI stays responsive, a run can be cancelled, and a crash
or a missing dependency is a message rather than a dead Slicer (as SlicerMONAIAuto3DSeg runs its models)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

#: what the SR process imports; the module offers to pip-install the project when one is missing
MODULES = ("torch", "monai", "monai_sr_bundle")


class RunError(RuntimeError):
    """The SR process failed or was cancelled; the message is the process's own error sentence."""


def missing_dependencies(python: str = sys.executable) -> list[str]:
    """The modules of MODULES that ``python`` cannot import."""
    code = "import importlib.util, sys; print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))"
    try:
        done = subprocess.run(
            [python, "-c", code, *MODULES], capture_output=True, text=True, timeout=120, cwd=tempfile.gettempdir()
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
            cwd=tempfile.gettempdir(),
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
            CLI refuses bad values and any of them for a deterministic method).
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
    ) -> None:
        self.input_path, self.output_dir = os.path.abspath(input_path), Path(output_dir).absolute()
        self.cmd = [python, "-m", "monai_sr_bundle.cli", "sr", self.input_path, "-o", str(self.output_dir),
                    "-m", method, "--scale", str(int(scale)), "--slice-by-slice"]  # fmt: skip
        options = {"weights": weights, "sampler": sampler, "steps": steps, "seed": seed, "samples": samples}
        for key, value in options.items():
            if value is not None:
                self.cmd += [f"--{key}", str(value)]
        self.stem = Path(input_path).name.split(".")[0]
        self.process: subprocess.Popen | None = None
        self.cancelled = False

    def start(self) -> SRRun:
        try:
            self.process = subprocess.Popen(
                self.cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                start_new_session=True,
                cwd=tempfile.gettempdir(),  # what the process imports must not depend on Slicer's working folder
            )
        except OSError as e:
            raise RunError(f"cannot start the SR process ({e.strerror}): {self.cmd[0]}") from e
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def cancel(self) -> None:
        """Stop the run and everything it started."""
        if self.running():
            self.cancelled = True
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()

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
        them); :class:`RunError` with the process's error if it failed, and then nothing is left written."""
        if self.process is None:
            self.start()
        try:
            output, _ = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.cancel()
            raise self._fail(f"SR took longer than {timeout:g} s and was stopped.") from None
        if self.cancelled:
            raise self._fail("SR was cancelled.")
        lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
        if self.process.returncode != 0:
            errors = (
                [line for line in lines if line.startswith("error:")]
                or lines[-1:]
                or [f"exit code {self.process.returncode}"]
            )
            raise self._fail(errors[-1].removeprefix("error:").strip())
        prefix = f"{self.stem}_sr"
        results = {p.name.split(".")[0].removeprefix(prefix).lstrip("_") or "sr": str(p) for p in self._written()}
        if "sr" not in results:
            raise RunError(f"SR finished but wrote no {prefix} file to {self.output_dir}.")
        return results
