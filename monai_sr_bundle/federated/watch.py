"""What the NVFlare server's main process watches for, beyond what NVFlare 2.9 does: installed in the server's
kit by :mod:`monai_sr_bundle.federated.deploy` (``local/resources.json``).

- :class:`InterruptedJobs`: NVFlare cannot resume a job after the server stopped in the middle of it (it no
  longer keeps snapshots of the server's components) and leaves the job ``RUNNING`` for ever: it cannot be
  aborted ("not running"), downloaded or deleted ("still running"), and its last published global model stays
  in the server's run folder where no admin command reaches it. Once the server is up again, each such job
  ends ``FINISHED:ABANDONED`` with its run folder (the last good round's model, ``weights.json``,
  ``fl_report.json``) saved as its result, so ``nvflare job download`` returns it and the job can be deleted.
  To go on training, submit the job again with that model as ``initial_weights`` and the rounds still to do.
- :class:`DuplicateSiteNames`: two clients started with one site's kit (a copied kit) take the site's one
  connection from each other every few seconds, the site never trains, and the admin view shows one healthy
  site. Once the site's connection has been taken over ``EVICTIONS`` times within ``WINDOW_S`` seconds, the
  site name is disabled (both clients are refused: the server cannot tell which one is the hospital) and
  the server log says why, naming the site; the admin enables it again once the copy is stopped.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
from collections import defaultdict, deque

from nvflare.apis.event_type import EventType
from nvflare.apis.fl_component import FLComponent
from nvflare.apis.fl_constant import SystemComponents
from nvflare.apis.fl_context import FLContext
from nvflare.apis.job_def import RunStatus
from nvflare.fuel.f3.sfm import sfm_endpoint

#: a site whose connection is taken over this many times within WINDOW_S seconds has two clients
EVICTIONS, WINDOW_S = 3, 60.0
#: how NVFlare's connection layer says that a new connection of an endpoint replaced its previous one
_EVICTED = re.compile(r"is evicted for \S+ from endpoint (\S+) for exceeding limit")


class InterruptedJobs(FLComponent):
    """Ends the jobs a previous server process left running, keeping what they had published."""

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        if event_type != EventType.SYSTEM_START:
            return
        jobs = fl_ctx.get_engine().get_component(SystemComponents.JOB_MANAGER)
        workspace = fl_ctx.get_workspace()
        # a server that has just started runs no job yet: every job marked running was the previous process's
        for job in jobs.get_jobs_by_status([RunStatus.RUNNING, RunStatus.DISPATCHED], fl_ctx):
            run_dir = workspace.get_run_dir(job.job_id)
            kept = os.path.isdir(run_dir)
            if kept:
                jobs.save_workspace(job.job_id, [run_dir], fl_ctx)
                shutil.rmtree(run_dir, ignore_errors=True)
            jobs.set_status(job.job_id, RunStatus.ABANDONED, fl_ctx)
            self.log_warning(
                fl_ctx,
                f"job {job.job_id} was running when the server stopped; it is now {RunStatus.ABANDONED}"
                + (
                    f" and its last published model is in its result (nvflare job download {job.job_id})."
                    if kept
                    else " (it had no run folder left on this server)."
                ),
            )


class DuplicateSiteNames(FLComponent):
    """Disables a site name that two clients use, from what NVFlare's connection layer logs (it offers no
    event for a connection taken over)."""

    def __init__(self) -> None:
        super().__init__()
        self._handler = _Evictions(self._evicted)
        self._seen: dict[str, deque] = defaultdict(deque)
        self._disabling: set[str] = set()
        self._lock = threading.Lock()
        self._engine = None

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        source = logging.getLogger(sfm_endpoint.__name__)
        if event_type == EventType.SYSTEM_START:
            self._engine = fl_ctx.get_engine()
            source.addHandler(self._handler)
            if source.getEffectiveLevel() > logging.INFO:
                source.setLevel(logging.INFO)
        elif event_type == EventType.SYSTEM_END:
            source.removeHandler(self._handler)

    def _evicted(self, site: str) -> None:
        if self._engine is None:
            return
        now = time.monotonic()
        with self._lock:
            if site in self._disabling or self._engine.server.client_manager.is_client_disabled(site):
                return  # being disabled, or disabled while the copy still connects
            seen = self._seen[site]
            seen.append(now)
            while now - seen[0] > WINDOW_S:
                seen.popleft()
            if len(seen) < EVICTIONS:
                return
            times = len(seen)
            seen.clear()  # once the admin enables the name again, it is counted afresh
            self._disabling.add(site)
        # the connection layer holds its lock while it logs: disable from another thread
        threading.Thread(target=self._disable, args=(site, times), daemon=True).start()

    def _disable(self, site: str, times: int) -> None:
        try:
            with self._engine.new_context() as fl_ctx:
                self.log_error(
                    fl_ctx,
                    f"site {site}: two clients are connected under this name (a copied kit?); they took the site's "
                    f"connection from each other {times} times within {WINDOW_S:.0f} s. The name is disabled, so "
                    f"neither trains: stop the client that is not the site's, then enable it again from the admin "
                    f"console (enable_client {site}).",
                )
                self._engine.disable_clients([site])
        finally:
            with self._lock:
                self._disabling.discard(site)


class _Evictions(logging.Handler):
    """Calls ``on_eviction(site)`` for each log record saying that a site's connection was taken over."""

    def __init__(self, on_eviction) -> None:
        super().__init__(level=logging.INFO)
        self.on_eviction = on_eviction

    def emit(self, record: logging.LogRecord) -> None:
        found = _EVICTED.search(record.getMessage())
        if found:
            self.on_eviction(found.group(1))
