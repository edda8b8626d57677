"""Connections before a request exists: a deadline for the request line and headers, and a cap on
the connections still waiting for them.

uvicorn closes idle keep-alive connections but sets no deadline before a request's headers are
complete, and its `limit_concurrency` counts open connections: a few hundred sockets that send
nothing (or half a header) would hold slots forever and get every other client a 503. Here a
connection must finish its headers within `header_timeout_s` of its first byte (or of opening);
past `max_waiting` such connections the longest-waiting one is let go first, so a client that
sends its request at once always gets in. Requests themselves are bounded by the guard and the
batcher (`guard.py`, `server.py`), not by counting connections.
"""

from __future__ import annotations

import resource
from collections import OrderedDict
from typing import Any

from uvicorn.protocols.http.h11_impl import H11Protocol


def header_deadline_protocol(header_timeout_s: float, max_waiting: int) -> type[H11Protocol]:
    """uvicorn's h11 protocol (the `http=` class it accepts) with the deadline and the cap."""
    waiting: OrderedDict[Any, None] = OrderedDict()  # oldest first

    class HeaderDeadline(H11Protocol):
        _deadline: Any = None

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._start_waiting()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_request():
                self._stop_waiting()
            elif self not in waiting:  # the first byte of the next request on a kept connection
                self._start_waiting()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_waiting()
            super().connection_lost(exc)

        def _in_request(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _start_waiting(self) -> None:
            waiting[self] = None
            self._deadline = self.loop.call_later(header_timeout_s, self._let_go)
            while len(waiting) > max_waiting:
                next(iter(waiting))._let_go()

        def _stop_waiting(self) -> None:
            waiting.pop(self, None)
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _let_go(self) -> None:
            self._stop_waiting()
            if not self._in_request() and not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadline


def raise_open_files_limit(wanted: int) -> int:
    """Lift the soft limit of open files towards `wanted` (up to the hard limit), so that the
    connection cap, not the file-descriptor limit, decides who is let go. Returns the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft
