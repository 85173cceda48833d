"""Waiting for an app: ``ping`` once, until it answers (``wait_for``), until it is gone, or
until a new process answers after a restart. Every retry uses the one backoff
(:class:`app_agent.wire.backoff.Backoff`): each try is one refused connect, so waiting costs
next to no CPU."""

from __future__ import annotations

import time

from app_agent import wire
from app_agent.wire import Address
from app_agent.wire.backoff import Backoff
from rpcctl import _transport
from rpcctl._transport import Security
from rpcctl.client import DEFAULT_TIMEOUT, Client, resolve_address
from rpcctl.exceptions import CallTimeout, Unreachable

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def ping(
    node: str | Address | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    security: Security | None = None,
    ready: bool = False,
) -> None:
    """Ping the agent at *node* with the light handshake path; raise when it does not answer
    (or, with *ready*, when the app has not declared itself ready: NotReady, exit 3)."""
    _transport.ping(resolve_address(node), timeout, security or Security.resolve(), ready)


def wait_for(
    node: str | Address | None = None,
    timeout: float = 10.0,
    security: Security | None = None,
    ready: bool = False,
    deadline: float | None = None,
) -> float:
    """Ping until the agent answers or *timeout* seconds pass; return the seconds waited.

    Retries only while nothing answers, with a backoff from 5 ms up to 40 ms between tries
    (each try is one refused connect, so the wait costs next to no CPU); an agent that
    answers with a refusal (authentication, version) fails at once. Unreachable when the
    time runs out. A fleet waits for every node until one shared *deadline* (a
    ``time.monotonic()`` value; *timeout* is then what the message says was waited).
    """
    address = resolve_address(node)
    security = security or Security.resolve()
    started = time.monotonic()
    answer_when_up(
        address, security, ready, deadline if deadline is not None else started + timeout, timeout
    )
    return time.monotonic() - started


def answer_when_up(
    address: Address, security: Security, ready: bool, deadline: float, waited: float
) -> dict[str, Any]:
    """Ping *address* until it answers or *deadline* (``time.monotonic()``) passes; the
    agent's handshake answer (its pid, version, readiness). Unreachable saying *waited*
    seconds went by when nothing answered."""
    backoff = Backoff(0.005, 0.04, deadline)
    while True:
        try:
            return _transport.ping(
                address, max(min(DEFAULT_TIMEOUT, backoff.remaining()), 0.05), security, ready
            )
        except (Unreachable, CallTimeout) as exc:
            if not backoff.sleep():
                msg = f"no agent answered within {waited:g}s: {exc.message}"
                raise Unreachable(msg, reason=exc.reason, data=exc.data) from None


def wait_gone(
    node: str | Address | None, pid: int, timeout: float, security: Security | None = None
) -> None:
    """Wait until the app (*pid*) is gone: the process has exited when it runs on this host,
    and its agent no longer answers. CallTimeout when *timeout* passes first."""
    address = resolve_address(node)
    security = security or Security.resolve()
    backoff = Backoff(0.01, 0.1, time.monotonic() + timeout)
    while True:
        local = address.is_loopback
        if not _answers(address, security) and (not local or not wire.pid_alive(pid)):
            return
        if not backoff.sleep():
            msg = f"{address}: the app (pid {pid}) is still running after {timeout:g}s"
            raise CallTimeout(msg)


def wait_restarted(
    node: str | Address | None, old_pid: int, timeout: float, security: Security | None = None
) -> int:
    """Wait until an agent answers again from a process other than *old_pid*; its pid."""
    address = resolve_address(node)
    security = security or Security.resolve()
    backoff = Backoff(0.02, 0.2, time.monotonic() + timeout)
    while True:
        try:
            with Client(address, min(DEFAULT_TIMEOUT, timeout), security) as conn:
                pid = int(conn.info()["pid"])
            if pid != old_pid:
                return pid
        except (Unreachable, CallTimeout):
            pass
        if not backoff.sleep():
            msg = f"{address}: no new app process answered within {timeout:g}s"
            raise CallTimeout(msg)


def _answers(address: Address, security: Security) -> bool:
    try:
        _transport.ping(address, 1.0, security)
    except (Unreachable, CallTimeout):
        return False
    return True
