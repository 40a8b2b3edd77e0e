"""The kiosk on uvicorn, with the time limits uvicorn leaves open and a shutdown that does not wait for a portrait.

uvicorn (h11) closes an idle keep-alive connection after ``timeout_keep_alive``, but it has no limit on how long
a request may take to *arrive*: a client that sends its headers one byte a second (or connects and sends
nothing) holds a connection, and its memory, for ever. :class:`KioskProtocol` closes a connection whose request
headers are not complete ``header_timeout`` seconds after its first byte (or after it connected), and one whose
body is not complete ``body_timeout`` seconds after its headers; the headers themselves are limited to
``h11_max_incomplete_event_size`` bytes.

:class:`KioskUvicorn` answers every waiting and running guest with a one-line 503 the moment the server is
asked to stop (SIGTERM, Ctrl+C), instead of uvicorn's default of waiting for every open request and then for
the generation in progress (51 s measured on an sd15-size bundle).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 5.0     # seconds for a request's headers to arrive
BODY_TIMEOUT = 120.0     # seconds for a request's body (two photos) to arrive once its headers are in
KEEP_ALIVE = 5           # seconds an idle keep-alive connection stays open
MAX_HEADER_BYTES = 16 * 1024
GRACEFUL_SHUTDOWN = 3    # seconds uvicorn waits for open requests once every guest has been answered


class KioskProtocol(H11Protocol):
    """uvicorn's h11 protocol with deadlines on reading a request (``config.header_timeout``, ``body_timeout``)."""

    def __init__(self, config: uvicorn.Config, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, *args, **kwargs)
        self._header_timeout = float(getattr(config, "header_timeout", HEADER_TIMEOUT))
        self._body_timeout = float(getattr(config, "body_timeout", BODY_TIMEOUT))
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = ""  # "headers" or "body" while a deadline runs

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm("headers", self._header_timeout)  # a connection that never sends a byte is closed too

    def data_received(self, data: bytes) -> None:
        if self._deadline is None and self.conn.their_state is h11.IDLE:
            self._arm("headers", self._header_timeout)  # the next request on a kept-alive connection
        super().data_received(data)
        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase != "body":
            self._arm("body", self._body_timeout)
        elif state is not h11.IDLE and state is not h11.SEND_BODY:
            self._disarm()  # the whole request is in: no limit on how long the app takes to answer

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self, phase: str, seconds: float) -> None:
        self._disarm()
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline, self._phase = None, ""

    def _expired(self) -> None:
        what, seconds = ("headers", self._header_timeout) if self._phase == "headers" else ("body",
                                                                                             self._body_timeout)
        self._deadline, self._phase = None, ""
        if not self.transport.is_closing():
            prefix = "%s:%d - " % self.client if self.client else ""
            self.logger.info("%sclosed a connection whose request %s did not arrive within %g s", prefix, what,
                             seconds)
            self.transport.close()


class KioskUvicorn(uvicorn.Server):
    """uvicorn's server for a kiosk app: on shutdown, the app's line answers everyone first (one-line 503)."""

    def __init__(self, app: Any, *, log_level: str = "info", header_timeout: float = HEADER_TIMEOUT,
                 body_timeout: float = BODY_TIMEOUT) -> None:
        config = uvicorn.Config(app, log_level=log_level, http=KioskProtocol, timeout_keep_alive=KEEP_ALIVE,
                                h11_max_incomplete_event_size=MAX_HEADER_BYTES,
                                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN)
        config.header_timeout = header_timeout  # type: ignore[attr-defined]  # read by KioskProtocol
        config.body_timeout = body_timeout  # type: ignore[attr-defined]
        super().__init__(config)
        self.kiosk_app = app

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        line = getattr(getattr(self.kiosk_app, "state", None), "queue", None)
        if line is not None:
            line.stop()  # waiting and running guests get their 503 now, not after the running portrait
        await super().shutdown(sockets=sockets)
