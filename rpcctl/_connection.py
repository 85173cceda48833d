"""One kept connection to an agent: the socket, the handshake, RPyC, and the raw requests.

:class:`rpcctl.client.Client` holds one and makes its calls through it; this module knows
nothing of the methods themselves (``app_agent.wire.protocol`` declares those).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from app_agent import wire
from app_agent.wire import Address, Reason
from rpcctl import _transport
from rpcctl._transport import Security
from rpcctl.exceptions import AuthenticationFailed, CallTimeout, Unreachable, UsageError

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_CLIENT_CONFIG: dict[str, Any] = {
    # The agent reaches nothing in the client either.
    "allow_safe_attrs": False,
    "allow_exposed_attrs": False,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "include_local_traceback": False,
    "sync_request_timeout": None,
}


class Connection:
    """A connection to the agent at *address*, admitted by its handshake."""

    def __init__(self, address: Address, timeout: float, security: Security) -> None:
        import rpyc

        from app_agent.streams import BoundedChannel, BufferedSocketStream
        from app_agent.wire.records import RecordSocket

        self.address = address
        self.timeout = timeout
        sock = _transport.open_socket(address, timeout, security)
        self.sock: Any = sock
        self._abandoned = False
        try:
            answer, keys = _transport.handshake(sock, address, "rpc", security)
            self.handshake: dict[str, Any] = answer
            if keys is not None:
                to_agent, to_client = keys
                self.sock = RecordSocket(sock, send_key=to_agent, recv_key=to_client)
            # The connection's own requests (the root, a method's netref, the polite close)
            # wait at most *timeout*; calls carry their own expiry. An answer, once begun,
            # must keep arriving (no pause of *timeout*), and within the call's own deadline.
            config = dict(_CLIENT_CONFIG, sync_request_timeout=timeout)
            self._channel = BoundedChannel(BufferedSocketStream(self.sock, stall=timeout))
            self._conn = rpyc.connect_channel(self._channel, config=config)
        except BaseException:
            sock.close()
            raise
        self._async = rpyc.async_
        # Each exposed method is fetched once and kept (a netref): one round trip per call.
        self._methods: dict[str, Any] = {}
        self._root = self._guarded("root", lambda: self._conn.root)

    def close(self) -> None:
        import contextlib

        if self._abandoned:
            # A request is still outstanding (it timed out): RPyC's polite close would wait
            # for the busy connection to answer, so drop the connection instead.
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError, EOFError):
            self._conn.close()

    def request(self, method: str, timeout: float | None, *args: Any) -> Any:
        """Call the agent's exposed *method* with plain arguments, within *timeout* seconds
        (None: no limit), unchecked: the raw reply. UsageError (reason ``no_method``) when
        the agent lacks the method (it runs an older rpcctl)."""

        def call() -> Any:
            bound = self._methods.get(method)
            if bound is None:
                bound = self._methods[method] = self._async(getattr(self._root, method))
            result = bound(*args)
            if timeout is not None:
                result.set_expiry(timeout)
                # Reading the answer, too, ends by then (a record that never ends included).
                self._channel.deadline = time.monotonic() + timeout
            try:
                return result.value
            finally:
                self._channel.deadline = None

        try:
            return self._guarded(method, call, timeout)
        except AttributeError:
            msg = (
                f"{self.address}: the agent does not offer `{method}`; "
                "it runs an rpcctl older than this client"
            )
            raise UsageError(msg, reason=Reason.NO_METHOD, data={"method": method}) from None

    def _guarded(
        self, method: str, request: Callable[[], Any], timeout: float | None = None
    ) -> Any:
        """Run *request*, turning RPyC's and the socket's failures into rpcctl's errors."""
        from rpyc.core.async_ import AsyncResultTimeout

        from app_agent.streams import FrameTimeout

        # Until the answer arrives the connection is owed a reply: if we leave early (a
        # timeout, Ctrl-C), close() must not wait politely for a busy agent.
        self._abandoned = True
        try:
            value = request()
            self._abandoned = False
            return value
        except AsyncResultTimeout:
            waited = timeout if timeout is not None else self.timeout
            msg = f"{self.address}: no answer to {method} within {waited:g}s"
            data: dict[str, Any] = {"seconds": waited, "method": method}
            reason = Reason.NO_ANSWER
            pid = self.handshake.get("pid") if self.address.is_loopback else None
            if isinstance(pid, int):
                from rpcctl._diagnose import why_stalled

                stalled = why_stalled(pid)
                msg += f": {stalled}" if stalled else ""
            raise CallTimeout(msg, reason=reason, data=data) from None
        except FrameTimeout as exc:
            msg = (
                f"{self.address}: the agent's answer to {method} did not arrive whole ({exc}), "
                "so the connection was dropped"
            )
            raise CallTimeout(msg, reason=Reason.NO_ANSWER, data={"method": method}) from None
        except (EOFError, OSError) as exc:
            if getattr(self.sock, "tampered", False):
                alerted = self.sock.peer_alerted
                what = (
                    "the agent found our request altered on the way"
                    if alerted
                    else "the agent's reply failed its integrity check"
                )
                msg = (
                    f"{self.address}: {what}: someone between us tampered with the "
                    "connection, so it was dropped (use tls:// across networks)"
                )
                reason = Reason.TAMPERED_REQUEST if alerted else Reason.TAMPERED_REPLY
                raise AuthenticationFailed(msg, reason=reason) from None
            msg = f"{self.address}: the connection was lost ({exc or type(exc).__name__})"
            raise Unreachable(msg, reason=Reason.CONNECTION_LOST) from None

    def reply(self, text: Any) -> Any:
        """The result of a reply envelope, or its error raised (see ``raise_error``)."""
        if type(text) is not str:
            msg = f"{self.address}: unexpected reply from the agent"
            raise UsageError(msg, reason=Reason.NOT_AN_AGENT)
        envelope = wire.loads(text)
        if envelope.get("ok"):
            return envelope.get("result")
        from rpcctl.exceptions import raise_error

        raise_error(envelope.get("error") or {})
