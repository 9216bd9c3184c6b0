"""``monai-sr worker``: the warm local process of 3D Slicer's module. It answers SR requests read as JSON
lines on stdin, one JSON line each on stdout, and keeps the last method it loaded, so only a session's first
request pays for importing torch and MONAI and loading the weights (seconds); later ones start computing at once.

A request names one image and what ``monai-sr sr --slice-by-slice`` would take for it::

    {"input": "in.nii.gz", "output": "out/", "method": "srcnn", "scale": 4, "modality": "cxr",
     "weights": null, "runtime": "auto", "precision": "auto", "max_output_mp": 64,
     "sampler": null, "steps": null, "seed": null, "samples": null}

The reply is ``{"written": [files], "loaded": whether this request loaded the method, "network_started":
time.time() of the network's first call, "runtime": what ran the network, "precision": its arithmetic}`` or
``{"error": one sentence}``. Bad input (an unreadable image,
an unknown method, bad options) is an error reply and the worker stays; any other failure is replied and ends
the worker, so that the next request starts a clean one; the end of stdin (its client closed the pipe,
quit or died) ends it too.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError, printable
from monai_sr_bundle.limits import MAX_OUTPUT_MP

#: what a request may say: where, and the options of ``monai-sr sr`` (left out: their defaults there)
REQUEST = (
    "input",
    "output",
    "method",
    "scale",
    "modality",
    "weights",
    "noise_level",
    "runtime",
    "precision",
    "max_output_mp",
    *methods.SAMPLING_OPTIONS,
)
#: the longest request line answered (a request is a few paths and numbers; a longer line is refused unread,
#: and its reply does not echo it)
MAX_REQUEST = 1 << 16


def _not_finite(text: str):
    raise ValueError(f"{text} is not a finite number")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        _not_finite(text)
    return value


class Worker:
    """The loaded method (one at a time: a Slicer session works with one) and the requests it answers."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.predictor = None
        self.network_started: float | None = None

    def handle(self, line: str) -> dict:
        """The reply to one request line."""
        request = self._parsed(line)
        options = {k: v for k, v in request.items() if k in ("scale", "modality", *methods.SAMPLING_OPTIONS)}
        method = methods.for_request(request.get("method"), **options)
        noise_level = method.check_noise_level(request.get("noise_level"))
        loaded = self._load(method, request.get("weights"), request.get("runtime"), request.get("precision"))
        self.predictor.noise_level = noise_level
        from monai_sr_bundle.batch import run_inference

        self.network_started = None
        written = run_inference(
            [request["input"]],
            self.predictor,
            request["output"],
            allow_volume=True,
            progress=False,
            max_output_mp=request.get("max_output_mp", MAX_OUTPUT_MP),
            **{k: v for k, v in options.items() if k in methods.SAMPLING_OPTIONS},
        )
        return {
            "written": written,
            "loaded": loaded,
            "network_started": self.network_started,
            "runtime": self.predictor.runtime,
            "precision": self.predictor.precision,
        }

    @staticmethod
    def _parsed(line: str) -> dict:
        if len(line) > MAX_REQUEST:
            raise InputError(f"a request line is at most {MAX_REQUEST} characters, got {len(line)}.")
        try:  # NaN, Infinity and 1e999 are no numbers a request takes; JSON nested thousands deep is no request
            request = json.loads(line, parse_constant=_not_finite, parse_float=_finite)
        except (ValueError, RecursionError) as e:
            raise InputError(f"a request must be one JSON object per line ({printable(e)[:200]}).") from e
        if not isinstance(request, dict):
            raise InputError(f"a request must be a JSON object, got {type(request).__name__}.")
        unknown = sorted(set(request) - set(REQUEST))
        if unknown:
            raise InputError(f"unknown request key(s) {', '.join(unknown)}; a request takes {', '.join(REQUEST)}.")
        nested = sorted(k for k, v in request.items() if isinstance(v, (list, dict)))
        if nested:
            raise InputError(f"request key(s) {', '.join(nested)} must each be a single value, not a list or object.")
        for key in ("input", "output"):
            if not isinstance(request.get(key), str) or not request[key]:
                raise InputError(f'a request needs "{key}", a path.')
        for key, what in (("weights", "a path"), ("runtime", "a runtime's name"), ("precision", "a precision")):
            if key in request and not (request[key] is None or (isinstance(request[key], str) and request[key])):
                raise InputError(f'"{key}" must be {what} or null, got {request[key]!r}.')
        return request

    def _load(self, method: methods.Method, weights: str | None, runtime: str | None, precision: str | None) -> bool:
        """Load ``method`` with ``weights`` on ``runtime`` in ``precision`` unless it is the one loaded (same
        overlay, same weights file unchanged, same runtime and precision); returns whether it was loaded now."""
        from monai_sr_bundle.engine import check_runtime

        path = Path(weights) if weights else method.weights_path
        runtime, precision = check_runtime(runtime), precision or "auto"
        key = (method, str(path), path.stat().st_mtime_ns if path.is_file() else None, runtime, precision)
        if key == self.key:
            return False
        self.key, self.predictor = None, None  # the old one is freed before the new one is loaded
        self.predictor = method.predictor(weights, runtime=runtime, precision=precision)
        self.predictor.network.register_forward_pre_hook(self._started)
        self.key = key
        return True

    def _started(self, module, args) -> None:
        if self.network_started is None:
            self.network_started = time.time()


def serve(requests=sys.stdin) -> int:
    """Answer ``requests`` until they end; 0, or 1 after a failure that was not the input's."""
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what libraries print goes to the log, not the replies
    worker = Worker()
    status = 0
    for line in requests:
        if not line.strip():
            continue
        try:
            reply = worker.handle(line)
        except InputError as e:
            reply = {"error": printable(e)}
        except Exception as e:  # a bug or a broken environment: said, and this worker ends
            logging.exception("the request failed")
            reply, status = {"error": f"the SR worker failed ({type(e).__name__}: {printable(e)})."}, 1
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if status:
            break
    return status
