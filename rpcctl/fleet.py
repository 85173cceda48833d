"""Many nodes at once: multicall with per-node results, deadlines and discovery.

Like Erlang's ``rpc:multicall``, a call goes out to every node in parallel (at most
*parallel* at a time) and comes back with each node's result and the nodes that failed,
each failure typed. A node costs at most its deadline, which covers connecting, the
handshake and the call, so a dead or black-holed node never delays the others.

A :class:`Where` filter keeps only the nodes whose agents report matching values (the app's
version, its name, readiness, or anything at the top of ``info``), decided on the
connection that then makes the call: the handshake's answer carries version, app, ready
and pid, so those cost no extra round trip.
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from app_agent.wire import Address, ErrorKind
from app_agent.wire.words import plural
from rpcctl import _transport, waits
from rpcctl._nodes import parse_node
from rpcctl._transport import Security
from rpcctl._where import Skipped, Where, judged
from rpcctl.exceptions import CallTimeout, RpcctlError, Unreachable

if TYPE_CHECKING:
    from rpcctl.client import Client


class Outcome:
    """What one node answered."""

    def __init__(
        self,
        node: str,
        result: Any = None,
        error: RpcctlError | None = None,
        duration: float = 0.0,
    ) -> None:
        self.node = node
        self.result = result
        self.error = error
        self.duration = duration
        self.skipped: str | None = None  # why the filter left this node out
        self.seen: dict[str, str] | None = None  # its values of the filter's keys, if so
        self.matched = False  # the filter judged this node and kept it

    @property
    def ok(self) -> bool:
        return self.error is None and self.skipped is None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    def to_dict(self) -> dict[str, Any]:
        if self.skipped is not None:
            return {
                "node": self.node,
                "skipped": self.skipped,
                "duration_s": round(self.duration, 3),
            }
        data: dict[str, Any] = {
            "node": self.node,
            "ok": self.ok,
            "duration_s": round(self.duration, 3),
        }
        if self.error is None:
            data["result"] = self.result
        else:
            data["error"] = self.error.to_dict()
        return data


class MulticallResult:
    """Every node's outcome, in the order the nodes were given (nodes a :class:`Where`
    filter left out are ``skipped``: neither ok nor failed)."""

    def __init__(
        self, outcomes: list[Outcome], duration: float, where: Where | None = None
    ) -> None:
        self.outcomes = outcomes
        self.duration = duration
        self.where = where or Where()

    @property
    def results(self) -> dict[str, Any]:
        """The nodes that answered, with their results."""
        return {o.node: o.result for o in self.outcomes if o.ok}

    @property
    def bad_nodes(self) -> dict[str, RpcctlError]:
        """The nodes that failed, with why (as in ``rpc:multicall``'s BadNodes)."""
        return {o.node: o.error for o in self.outcomes if o.error is not None}

    @property
    def skipped(self) -> dict[str, str]:
        """The nodes the filter left out, with why."""
        return {o.node: o.skipped for o in self.outcomes if o.skipped is not None}

    def no_match(self) -> str | None:
        """Why nothing ran, when the filter kept none of the nodes it could judge."""
        if not self.where or any(o.matched for o in self.outcomes):
            return None
        seen = [o.seen for o in self.outcomes if o.seen is not None]
        return self.where.nothing_matched(seen) if seen else None

    def exit_code(self, min_ok: int | None = None) -> int:
        """0 when every node (or at least *min_ok*) succeeded; otherwise the exit code of the
        most frequent failure (ties: the lower code). 3 when the filter matched no node."""
        if self.no_match() is not None:
            return 3
        kept = [o for o in self.outcomes if o.skipped is None]
        failures = [o.exit_code for o in kept if not o.ok]
        oks = len(kept) - len(failures)
        needed = len(kept) if min_ok is None else min_ok
        if oks >= needed and (failures == [] or min_ok is not None):
            return 0
        if not failures:
            return ErrorKind.UNREACHABLE.exit_code  # fewer nodes than --min-ok
        counts = collections.Counter(failures)
        return min(counts, key=lambda code: (-counts[code], code))

    def summary(self) -> str:
        kept = [o for o in self.outcomes if o.skipped is None]
        oks = sum(o.ok for o in kept)
        kinds = collections.Counter(str(o.error.kind) for o in kept if o.error)
        details = [f"{n} {kind}" for kind, n in sorted(kinds.items())]
        if len(kept) < len(self.outcomes):
            details.append(f"{len(self.outcomes) - len(kept)} skipped by --where")
        tail = f"; {', '.join(details)}" if details else ""
        return f"{oks}/{plural(len(kept), 'node')} ok in {self.duration:.2f}s{tail}"


def multicall(
    nodes: Sequence[str | Address],
    name: str,
    *args: Any,
    timeout: float = 10.0,
    parallel: int = 32,
    security: Security | None = None,
    lock_wait: float = 0.0,
    where: Where | Mapping[str, object] | Iterable[str] | None = None,
    **kwargs: Any,
) -> MulticallResult:
    """Call task *name* on every node in parallel; each node gets *timeout* seconds in all
    (a busy task lock is waited for up to *lock_wait* of them). With *where* (a
    :class:`Where`, ``{"version": "1.5.0"}`` or ``["version=1.5.0"]``), only on the nodes
    that match, judged on the connection that makes the call."""

    def call(conn: Client, deadline: float) -> Any:
        return conn.invoke(name, args, kwargs, timeout=_remaining(deadline), lock_wait=lock_wait)

    return on_clients(
        nodes, call, timeout=timeout, parallel=parallel, security=security, where=where
    )


def on_clients(
    nodes: Sequence[str | Address],
    action: Callable[[Client, float], Any],
    timeout: float,
    parallel: int = 32,
    security: Security | None = None,
    where: Where | Mapping[str, object] | Iterable[str] | None = None,
) -> MulticallResult:
    """Connect to every node and run *action(client, deadline)* on each connection that
    matches *where*, at most *parallel* at once."""
    from rpcctl.client import Client

    where = Where.parse(where)

    def one(address: Address, deadline: float, sec: Security) -> Any:
        with Client(address, _remaining(deadline), sec) as conn:
            where.check_client(conn)
            return action(conn, deadline)

    return fan_out(nodes, one, timeout, parallel, security, where)


def fan_out(
    nodes: Sequence[str | Address],
    action: Callable[[Address, float, Security], Any],
    timeout: float,
    parallel: int = 32,
    security: Security | None = None,
    where: Where | None = None,
) -> MulticallResult:
    """Run *action(address, deadline, security)* for every node, at most *parallel* at once.
    An action that raises :class:`Skipped` (its node does not match *where*) leaves its node
    out of the outcome, neither ok nor failed. Any other exception is a bug, not a node's
    answer: it is raised here, on the caller's thread, once every node is done (never a
    node reported ok with no result)."""
    security = security or Security.resolve()
    started = time.monotonic()
    outcomes = [Outcome(str(node)) for node in nodes]
    if not outcomes:
        return MulticallResult([], 0.0, where)

    def one(index: int) -> None:
        outcome = outcomes[index]
        node_started = time.monotonic()
        deadline = node_started + timeout
        judged.matched = False
        try:
            address = nodes[index] if isinstance(nodes[index], Address) else _parse(nodes[index])
            outcome.result = action(address, deadline, security)  # type: ignore[arg-type]
        except Skipped as skipped:
            outcome.skipped, outcome.seen = skipped.reason, skipped.seen
        except RpcctlError as exc:
            outcome.error = exc
        except (OSError, EOFError) as exc:
            outcome.error = Unreachable(f"{outcome.node}: {exc}")
        except BaseException as exc:  # noqa: BLE001 - re-raised below, on the caller's thread
            crashes.append(exc)
        outcome.matched = judged.matched
        outcome.duration = time.monotonic() - node_started

    crashes: list[BaseException] = []
    for thread in _in_parallel(one, range(len(outcomes)), parallel):
        thread.join()
    if crashes:
        raise crashes[0]
    return MulticallResult(outcomes, time.monotonic() - started, where)


def _in_parallel(work: Callable[[Any], None], items: Iterable[Any], parallel: int) -> list[Any]:
    """Run *work* on each item on at most *parallel* daemon threads; the threads (started).

    Plain threads and a queue: concurrent.futures (with the logging it imports) would add
    more to a fleet command's start than pinging fifty nodes takes.
    """
    todo: queue.SimpleQueue[Any] = queue.SimpleQueue()
    count = 0
    for item in items:
        todo.put(item)
        count += 1

    def worker() -> None:
        while True:
            try:
                item = todo.get_nowait()
            except queue.Empty:
                return
            work(item)

    threads = [
        threading.Thread(target=worker, name="rpcctl-fleet", daemon=True)
        for _ in range(max(1, min(parallel, count)))
    ]
    for thread in threads:
        thread.start()
    return threads


def ping_all(
    nodes: Sequence[str | Address],
    timeout: float = 5.0,
    parallel: int = 32,
    security: Security | None = None,
    ready: bool = False,
    wait: float | None = None,
    where: Where | Mapping[str, object] | Iterable[str] | None = None,
) -> MulticallResult:
    """Ping every node through the handshake alone (no RPyC); with *ready*, each app must
    also be ready. With *wait*, keep trying a node that does not answer (yet) until *wait*
    seconds from now: every node has that same deadline, and they are waited for in
    parallel (at most *parallel* at once). With *where*, the nodes that do not match are
    left out, judged on the ping's answer (and ``info``, for keys it lacks)."""
    where = Where.parse(where)
    if wait is None:

        def ping(address: Address, deadline: float, sec: Security) -> str:
            answer = _transport.ping(address, _remaining(deadline), sec, ready)
            _judge(where, answer, address, deadline, sec)
            return "pong"

        return fan_out(nodes, ping, timeout, parallel, security, where)

    until = time.monotonic() + wait

    def ping_until(address: Address, _deadline: float, sec: Security) -> str:
        answer = waits.answer_when_up(address, sec, ready, until, wait)
        _judge(where, answer, address, until, sec)
        return "pong"

    return fan_out(nodes, ping_until, wait, parallel, security, where)


def _judge(
    where: Where, answer: dict[str, Any], address: Address, deadline: float, sec: Security
) -> None:
    """:meth:`Where.check` on a ping's *answer*, asking ``info`` for keys it lacks."""
    if not where:
        return
    if not where.needs_info:
        where.check(answer)
        return
    from rpcctl.client import Client

    with Client(address, _remaining(deadline), sec) as conn:
        where.check_client(conn)


def first_answering(
    nodes: Sequence[str | Address],
    timeout: float = 5.0,
    security: Security | None = None,
    parallel: int = 32,
    where: Where | Mapping[str, object] | Iterable[str] | None = None,
) -> Address:
    """The node that answers a ping first (for ``--one``), among those that match *where*;
    Unreachable when none does, naming the filter that matched nothing.

    At most *parallel* pings are in flight, on daemon threads, so the first answer is used
    at once and slower or dead nodes never hold up the caller (nor its exit).
    """
    security = security or Security.resolve()
    where = Where.parse(where)
    addresses = [_parse(n) for n in nodes]
    answers: queue.SimpleQueue[tuple[Address, str | None, Skipped | None]] = queue.SimpleQueue()

    def ping(address: Address) -> None:
        deadline = time.monotonic() + timeout
        try:
            answer = _transport.ping(address, timeout, security)
            _judge(where, answer, address, deadline, security)
        except Skipped as skipped:
            answers.put((address, None, skipped))
        except RpcctlError as exc:
            answers.put((address, exc.message, None))
        else:
            answers.put((address, None, None))

    _in_parallel(ping, addresses, parallel)  # not joined: the first answer is enough
    errors = []
    skipped: list[Skipped] = []
    for _ in addresses:
        address, error, left_out = answers.get()
        if left_out is not None:
            skipped.append(left_out)
        elif error is None:
            return address
        else:
            errors.append(error)
    if skipped:
        msg = where.nothing_matched([s.seen for s in skipped])
        if errors:
            msg += f"; {len(errors)} did not answer: " + "; ".join(errors[:3])
        raise Unreachable(msg)
    msg = f"none of {plural(len(addresses), 'node')} answered: " + "; ".join(errors[:3])
    raise Unreachable(msg)


def _parse(node: str | Address) -> Address:
    return node if isinstance(node, Address) else parse_node(node)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        msg = "the node's deadline passed"
        raise CallTimeout(msg)
    return remaining
