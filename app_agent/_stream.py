"""The byte stream both sides run RPyC over."""

from __future__ import annotations

import ssl

from rpyc.core.stream import SocketStream


class TLSAwareStream(SocketStream):  # type: ignore[misc]
    """RPyC's socket stream, aware of bytes TLS has already decrypted and buffered.

    RPyC polls the file descriptor before each read; bytes that TLS has already taken off
    the socket are invisible to that poll, so without this a whole frame could sit unread.
    """

    def poll(self, timeout: float | None) -> bool:
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            return True
        return bool(super().poll(timeout))
