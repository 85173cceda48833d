"""Authenticated records: what both sides send after a cookie handshake without TLS.

The handshake proves the cookie, but on its own it protects only itself: an on-path relay
could forward it and then speak (or rewrite) RPyC on the authenticated socket. So every
``send`` becomes one record, ``length (4 bytes) | payload | tag (16 bytes)``, where the tag is
HMAC-SHA256 (truncated to 128 bits) under a key derived from the cookie and both nonces of
this connection's handshake, over an implicit per-direction sequence number, the length and
the payload. Injected, altered, reordered, replayed or reflected records fail the tag and
end the connection. The side that detects it first sends one authenticated *alert* record
(the length field's top bit set) before it closes, so the other side can tell tampering from
a lost connection. Records are not encrypted: use tls:// where contents must stay private.

Standard library only: the client loads this module for every kept connection.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import socket
import struct
import threading
from typing import Final

TAG_BYTES: Final = 16
MAX_RECORD: Final = 1 << 20
"""Largest payload one record may carry; RPyC writes at most 64 KiB at a time."""
_ALERT: Final = 1 << 31
_LENGTH: Final = struct.Struct("!I")
_SEQ: Final = struct.Struct("!Q")


class RecordError(ConnectionError):
    """A record failed its check: the connection was tampered with (or is not the peer's)."""


class RecordSocket:
    """A socket-like object (what RPyC's SocketStream uses) that authenticates each record.

    Reads come from one thread at a time (RPyC's receive lock); sends are serialised here,
    since an alert may be sent from the reading thread.
    """

    def __init__(self, sock: socket.socket, send_key: bytes, recv_key: bytes) -> None:
        self.sock = sock
        self._send_key = send_key
        self._recv_key = recv_key
        self._send_seq = 0
        self._recv_seq = 0
        self._raw = bytearray()  # bytes off the socket, not yet a whole record
        self._plain = b""  # a checked record's payload, not yet read
        self._offset = 0
        self._send_lock = threading.Lock()
        self.tampered = False
        self.peer_alerted = False  # the peer said it found our records tampered with

    # -- writing -----------------------------------------------------------------------------

    def send(self, data: bytes | bytearray | memoryview) -> int:
        payload = bytes(data[:MAX_RECORD])
        self._send_record(len(payload), payload)
        return len(payload)

    def _send_record(self, length_field: int, payload: bytes) -> None:
        header = _LENGTH.pack(length_field)
        with self._send_lock:
            tag = _tag(self._send_key, self._send_seq, header, payload)
            self._send_seq += 1
            self.sock.sendall(header + payload + tag)

    def sendall(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[self.send(view) :]

    # -- reading -----------------------------------------------------------------------------

    def pending(self) -> int:
        """Bytes already taken off the socket: a poll of the descriptor cannot see them."""
        return len(self._plain) - self._offset + len(self._raw)

    def recv(self, count: int) -> bytes:
        if self._offset >= len(self._plain) and not self._next_record():
            return b""
        end = self._offset + count
        chunk = self._plain[self._offset : end]
        self._offset = min(end, len(self._plain))
        return chunk

    def _next_record(self) -> bool:
        """Read and check one whole record; False at a clean end of the stream.

        Partial bytes are kept across calls, so a socket timeout loses nothing.
        """
        while True:
            if len(self._raw) >= _LENGTH.size:
                (field,) = _LENGTH.unpack_from(self._raw)
                length = field & ~_ALERT
                if length > MAX_RECORD:
                    self._fail(f"a record announces {length} bytes (at most {MAX_RECORD})")
                total = _LENGTH.size + length + TAG_BYTES
                if len(self._raw) >= total:
                    break
                want = total - len(self._raw)
            else:
                want = _LENGTH.size - len(self._raw) + TAG_BYTES
            chunk = self.sock.recv(max(want, 65536))
            if not chunk:
                if self._raw:
                    self._fail("the stream ended inside a record")
                return False
            self._raw += chunk
        header = bytes(self._raw[: _LENGTH.size])
        payload = bytes(self._raw[_LENGTH.size : _LENGTH.size + length])
        tag = bytes(self._raw[_LENGTH.size + length : total])
        if not hmac.compare_digest(tag, _tag(self._recv_key, self._recv_seq, header, payload)):
            self._fail("a record failed its integrity check")
        del self._raw[:total]
        self._recv_seq += 1
        if field & _ALERT:
            self.tampered = self.peer_alerted = True
            msg = f"the peer found our records tampered with ({payload.decode(errors='replace')})"
            raise RecordError(msg)
        self._plain, self._offset = payload, 0
        return True

    def abandon(self, reason: str) -> None:
        """The reader gives up on the stream (nothing came for too long): a record begun and
        never finished is a failed one, and the peer is told so, as for a bad record."""
        if self._raw:
            with contextlib.suppress(RecordError):
                self._fail(f"a record did not arrive whole ({reason})")

    def _fail(self, reason: str) -> None:
        self.tampered = True
        # Tell the peer, authenticated, so it can say "tampered" rather than "lost".
        with contextlib.suppress(OSError):
            self._send_record(_ALERT | len(reason), reason.encode())
        raise RecordError(reason)

    # -- the rest of the socket ---------------------------------------------------------------

    def fileno(self) -> int:
        return self.sock.fileno()

    def settimeout(self, timeout: float | None) -> None:
        self.sock.settimeout(timeout)

    def shutdown(self, how: int) -> None:
        self.sock.shutdown(how)

    def close(self) -> None:
        self.sock.close()


def _tag(key: bytes, seq: int, header: bytes, payload: bytes) -> bytes:
    return hmac.digest(key, _SEQ.pack(seq) + header + payload, hashlib.sha256)[:TAG_BYTES]
