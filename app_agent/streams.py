"""The byte stream both sides run RPyC over."""

from __future__ import annotations

from rpyc.core.stream import SocketStream


class BufferedSocketStream(SocketStream):  # type: ignore[misc]
    """RPyC's socket stream, aware of bytes a layer under it has already taken off the socket.

    RPyC polls the file descriptor before each read; bytes that TLS (an ``SSLSocket``) or
    the record layer (:class:`app_agent.wire.records.RecordSocket`) already hold are invisible to
    that poll, so without this a whole frame could sit unread.
    """

    def poll(self, timeout: float | None) -> bool:
        pending = getattr(self.sock, "pending", None)
        if pending is not None and pending():
            return True
        return bool(super().poll(timeout))
