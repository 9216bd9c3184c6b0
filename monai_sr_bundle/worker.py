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
from dataclasses import fields
from pathlib import Path

from monai_sr_bundle import methods
from monai_sr_bundle.errors import InputError, printable
from monai_sr_bundle.jsonfile import SINGLE, check_object, text
from monai_sr_bundle.request import SRRequest

#: what a request may say (:func:`~monai_sr_bundle.jsonfile.check_object`'s schema): where, the method, and the
#: options of ``monai-sr sr`` (an :class:`~monai_sr_bundle.request.SRRequest`; left out: their defaults there)
REQUEST = {
    "input": text("a path"),
    "output": text("a path"),
    "method": SINGLE,
    "scale": SINGLE,
    "modality": SINGLE,
    "weights": text("a path").or_null(),
    **{f.name: SINGLE for f in fields(SRRequest)},
    "runtime": text("a runtime's name").or_null(),
    "precision": text("a precision").or_null(),
}
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
        where = {k: request[k] for k in ("scale", "modality") if k in request}
        method = methods.for_request(request.get("method"), **where)
        from monai_sr_bundle.batch import run_inference
        from monai_sr_bundle.inference import Predictor

        options = Predictor.check(method, SRRequest.of(request))  # before the weights load
        loaded = self._load(method, request.get("weights"), options.runtime, options.precision)
        self.network_started = None
        written = run_inference(
            [request["input"]], self.predictor, request["output"], allow_volume=True, progress=False, request=options
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
        return check_object(request, "a request", REQUEST, required=("input", "output"))

    def _load(self, method: methods.Method, weights: str | None, runtime: str, precision: str) -> bool:
        """Load ``method`` with ``weights`` on ``runtime`` in ``precision`` unless it is the one loaded (same
        overlay, same weights file unchanged, same runtime and precision); returns whether it was loaded now."""
        from monai_sr_bundle.engine import check_runtime

        path = Path(weights) if weights else method.weights_path
        runtime = check_runtime(runtime)
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
