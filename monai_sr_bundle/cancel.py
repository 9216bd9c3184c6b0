"""Stopping SR work whose requester has gone: a server runs each request in a worker thread inside
:func:`cancellable` with an event it sets when the client disconnects, and the long loops (tiles, sampler
steps) call :func:`check`, so an abandoned 1000-step, 64-sample request frees the worker within a step."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_local = threading.local()


class WorkCancelledError(Exception):
    """The work was stopped because whoever asked for it is gone."""


class Token(threading.Event):
    """The event a server sets to cancel a request's work; a copy of the request holding it (MONAI Label
    deep-copies each request) holds the same token."""

    def __deepcopy__(self, memo: dict) -> Token:
        return self


@contextmanager
def cancellable(event: threading.Event | None) -> Iterator[None]:
    """Within this block, :func:`check` in this thread raises :class:`WorkCancelledError` once ``event`` is set."""
    previous, _local.event = getattr(_local, "event", None), event
    try:
        yield
    finally:
        _local.event = previous


def check() -> None:
    """Raise :class:`WorkCancelledError` if this thread's work was cancelled (a no-op outside :func:`cancellable`)."""
    event = getattr(_local, "event", None)
    if event is not None and event.is_set():
        raise WorkCancelledError("the requester went away; the SR was stopped")
