"""Deadlines on reading a request, below the app: uvicorn arms no timer on a new connection, so a client that
connects and sends half a request header, or stops half-way through a body, held a connection and a file
descriptor for ever (270 of them stopped ``/info/`` answering under a 256 file limit). The launcher serves
with :class:`TimedH11Protocol`."""

from __future__ import annotations

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: seconds a client has to send a request's headers, from its connection or the previous response
HEADER_S = 10.0
#: seconds a request body may stall (no bytes arriving while the server is ready to read them)
BODY_IDLE_S = 30.0


class TimedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose request headers are not complete within
    :data:`HEADER_S` or whose body stalls for :data:`BODY_IDLE_S`; a request being answered is never cut."""

    def connection_made(self, transport) -> None:  # noqa: ANN001 (asyncio's transport)
        super().connection_made(transport)
        self._last_data = self.loop.time()
        self._timer = None
        self._arm(HEADER_S)

    def data_received(self, data: bytes) -> None:
        self._last_data = self.loop.time()
        super().data_received(data)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm(HEADER_S)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().connection_lost(exc)

    def _arm(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(delay, self._check)

    def _check(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if state is h11.IDLE and self.conn.our_state is h11.IDLE:  # no whole header yet (or none at all)
            self.transport.close()
        elif state is h11.SEND_BODY:
            idle = self.loop.time() - self._last_data
            if idle >= BODY_IDLE_S and not self.flow.read_paused:
                self.transport.close()
            else:
                self._arm(max(1.0, BODY_IDLE_S - idle))
