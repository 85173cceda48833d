"""The byte stream and the frames both sides run RPyC over.

RPyC reads a frame (a 5-byte header, then as many bytes as it announces) with blocking reads
that retry a socket timeout for ever, and inflates a compressed frame whole: a peer that
sends part of a frame and goes quiet would hold the reader's thread for good, and a small
compressed frame could inflate to gigabytes. :class:`BoundedChannel` reads each frame
against deadlines instead (no byte for ``stall`` seconds, or the whole frame later than a
rate allows, or the caller's own deadline: :class:`FrameTimeout`), and, given a
``max_frame``, drains a larger request without holding it and inflates at most that much
(:class:`OversizedFrame`). It is handed to RPyC through its public
``rpyc.connect_channel``.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

from rpyc.core import brine, consts
from rpyc.core.channel import Channel
from rpyc.core.stream import SocketStream

FRAME_TIMEOUT = 10.0
"""Seconds a frame, once begun, may go without a byte arriving (the agent's default)."""
MIN_FRAME_RATE = 64 * 1024
"""Bytes a second a frame must average, past its first FRAME_TIMEOUT seconds."""
_HEAD = 64
"""Bytes of an oversized request's start looked at: enough to read its sequence number."""
_COMPRESSED_HEAD = 16 * 1024
"""Bytes of an oversized frame kept (of 2 GiB, say): compressed, deflate's first block
header alone can take hundreds before the request's first byte."""
_MAX_DEFLATE_RATIO = 1032
"""The most deflate can shrink data by: a shorter compressed frame cannot inflate past a
limit this many times its length."""


class FrameTimeout(EOFError):
    """A frame began but did not arrive whole in time: the connection is of no further use
    (an EOFError, so that RPyC closes it)."""


class OversizedFrame(Exception):
    """A request larger than the agent takes, drained without being held; ``seq`` is its
    RPyC sequence number, when it could be read, so that it can still be answered."""

    def __init__(self, size: int | None, limit: int, seq: int | None) -> None:
        what = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
        super().__init__(f"a request of {what}")
        self.size = size
        self.limit = limit
        self.seq = seq


class BufferedSocketStream(SocketStream):  # type: ignore[misc]
    """RPyC's socket stream, aware of bytes a layer under it has already taken off the socket,
    and reading against deadlines.

    RPyC polls the file descriptor before each read; bytes that TLS (an ``SSLSocket``) or
    the record layer (:class:`app_agent.wire.records.RecordSocket`) already hold are invisible to
    that poll, so without this a whole frame could sit unread.

    *stall* (seconds) becomes the socket's timeout: a read or a write that makes no progress
    for that long fails rather than blocks for ever.
    """

    def __init__(self, sock: Any, stall: float | None = None) -> None:
        super().__init__(sock)
        self.stall = stall
        sock.settimeout(stall)

    def poll(self, timeout: float | None) -> bool:
        pending = getattr(self.sock, "pending", None)
        if pending is not None and pending():
            return True
        return bool(super().poll(timeout))

    def write(self, data: bytes) -> None:
        # Through a memoryview: RPyC's own write re-slices (copies) the rest of a large frame
        # after every chunk, quadratic in the frame's size (a 100 MB argument: a minute).
        view = memoryview(data)
        try:
            while view:
                view = view[self.sock.send(view[: self.MAX_IO_CHUNK]) :]
        except OSError as exc:
            self.close()
            raise EOFError(exc) from None

    def read_by(self, count: int, deadline: float | None, hard: float | None = None) -> bytes:
        """*count* bytes; FrameTimeout when no byte comes for ``stall`` seconds, when the
        *deadline* (``time.monotonic()``) has passed between two chunks, or at the *hard*
        one (the caller's own: the socket's timeout is shortened to meet it); EOFError when
        the peer closes."""
        chunks = []
        timeout = self.stall
        try:
            while count > 0:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    raise FrameTimeout("a frame did not arrive whole in time")
                if hard is not None:
                    left = hard - now
                    if left <= 0:
                        raise FrameTimeout("a frame did not arrive whole in time")
                    if timeout is None or left < timeout:
                        timeout = left
                        self.sock.settimeout(left)
                try:
                    chunk = self.sock.recv(min(self.MAX_IO_CHUNK, count))
                except TimeoutError:
                    msg = f"a frame stopped arriving (no byte for {timeout:.3g}s)"
                    raise FrameTimeout(msg) from None
                except OSError as exc:
                    self.close()
                    raise EOFError(exc) from None
                if not chunk:
                    self.close()
                    raise EOFError("connection closed by peer")
                chunks.append(chunk)
                count -= len(chunk)
        finally:
            if timeout != self.stall and not self.closed:
                self.sock.settimeout(self.stall)
        return b"".join(chunks)


class BoundedChannel(Channel):  # type: ignore[misc]
    """RPyC's channel, reading each frame against deadlines and, with *max_frame*, refusing
    larger requests (announced, or once inflated) without holding them.

    ``deadline`` (``time.monotonic()``, or None) is the caller's own: the client sets it to
    its call's, so a frame that never ends cannot outlast ``--timeout``.
    """

    __slots__ = ("deadline", "max_frame")

    def __init__(self, stream: BufferedSocketStream, max_frame: int | None = None) -> None:
        super().__init__(stream)
        self.max_frame = max_frame
        self.deadline: float | None = None

    def recv(self) -> bytes:
        stream: BufferedSocketStream = self.stream
        started = time.monotonic()
        hard = self.deadline
        try:
            header = stream.read_by(self.FRAME_HEADER.size, None, hard)
            length, compressed = self.FRAME_HEADER.unpack(header)
            stall = stream.stall
            limit = None if stall is None else started + stall + length / MIN_FRAME_RATE
            if self.max_frame is not None and length > self.max_frame:
                self._drain(length, compressed, limit)
            data: bytes = stream.read_by(length + len(self.FLUSHER), limit, hard)
        except FrameTimeout as exc:
            if hard is None or time.monotonic() < hard:
                # The frame's own limits, not the caller's patience: a record under it that
                # was begun and never finished is a failed one, and the peer is told so.
                abandon = getattr(stream.sock, "abandon", None)
                if abandon is not None:
                    abandon(str(exc))
            # Closed here: RPyC's polite close would wait for an answer on this same stream.
            stream.close()
            raise
        data = data[: -len(self.FLUSHER)]
        if compressed:
            data = self._inflate(data)
        return data

    def _drain(self, length: int, compressed: bool, limit: float | None) -> None:
        """Read an oversized frame through, keeping only its first bytes; OversizedFrame."""
        assert self.max_frame is not None
        head = self.stream.read_by(min(length, _COMPRESSED_HEAD), limit, self.deadline)
        left = length + len(self.FLUSHER) - len(head)
        while left > 0:
            chunk = self.stream.read_by(min(left, self.stream.MAX_IO_CHUNK), limit, self.deadline)
            left -= len(chunk)
        if compressed:
            try:
                head = zlib.decompressobj().decompress(head, _HEAD)
            except zlib.error:
                head = b""
        raise OversizedFrame(None if compressed else length, self.max_frame, request_seq(head))

    def _inflate(self, data: bytes) -> bytes:
        """*data* inflated, never past ``max_frame``: a 1 MiB frame can inflate to 1 GiB, so
        unless *data* is too short for that, a first pass counts the inflated bytes (keeping
        none) before a second one keeps them."""
        if self.max_frame is None or len(data) * _MAX_DEFLATE_RATIO <= self.max_frame:
            return zlib.decompress(data)
        counter = zlib.decompressobj()
        head = b""
        size = 0
        rest = data
        while size <= self.max_frame:
            chunk = counter.decompress(rest, self.stream.MAX_IO_CHUNK)
            if not chunk:  # all of it inflated (or a truncated stream: decompress says so)
                break
            head = head or chunk[:_HEAD]
            size += len(chunk)
            rest = counter.unconsumed_tail
        if size > self.max_frame:
            raise OversizedFrame(None, self.max_frame, request_seq(head))
        return zlib.decompress(data)


def request_seq(head: bytes) -> int | None:
    """The sequence number of an RPyC request from its first bytes (the message type, then
    brine's ``(seq, args)`` tuple), so that a request never decoded can still be answered;
    None when they are not a request's."""
    if len(head) < 3 or head[0] != consts.MSG_REQUEST or head[1:2] != brine.TAG_TUP2:
        return None
    tag = head[2:3]
    if tag in brine.IMM_INTS_LOADER:
        return int(brine.IMM_INTS_LOADER[tag])
    if tag == brine.TAG_INT_L1 and len(head) > 3:
        digits = head[4 : 4 + head[3]]
        if len(digits) == head[3] and digits.isdigit():
            return int(digits)
    return None
