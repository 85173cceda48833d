"""Many nodes at once: multicall with per-node results, deadlines and discovery.

Like Erlang's ``rpc:multicall``, a call goes out to every node in parallel (at most
*parallel* at a time) and comes back with each node's result and the nodes that failed,
each failure typed. A node costs at most its deadline, which covers connecting, the
handshake and the call, so a dead or black-holed node never delays the others.
"""

from __future__ import annotations

import collections
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from app_agent.wire import Address, ErrorKind
from rpcctl import _transport, waits
from rpcctl._settings import parse_node
from rpcctl._transport import Security
from rpcctl.exceptions import CallTimeout, ConfigError, RpcctlError, Unreachable


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

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def exit_code(self) -> int:
        return 0 if self.error is None else self.error.exit_code

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "node": self.node,
            "ok": self.ok,
            "duration_s": round(self.duration, 3),
        }
        if self.error is None:
            data["result"] = self.result
        else:
            data["error"] = {
                "kind": str(self.error.kind),
                "message": self.error.message,
                "exit_code": self.error.exit_code,
            }
        return data


class MulticallResult:
    """Every node's outcome, in the order the nodes were given."""

    def __init__(self, outcomes: list[Outcome], duration: float) -> None:
        self.outcomes = outcomes
        self.duration = duration

    @property
    def results(self) -> dict[str, Any]:
        """The nodes that answered, with their results."""
        return {o.node: o.result for o in self.outcomes if o.ok}

    @property
    def bad_nodes(self) -> dict[str, RpcctlError]:
        """The nodes that failed, with why (as in ``rpc:multicall``'s BadNodes)."""
        return {o.node: o.error for o in self.outcomes if o.error is not None}

    def exit_code(self, min_ok: int | None = None) -> int:
        """0 when every node (or at least *min_ok*) succeeded; otherwise the exit code of the
        most frequent failure (ties: the lower code)."""
        failures = [o.exit_code for o in self.outcomes if not o.ok]
        oks = len(self.outcomes) - len(failures)
        needed = len(self.outcomes) if min_ok is None else min_ok
        if oks >= needed and (failures == [] or min_ok is not None):
            return 0
        if not failures:
            return ErrorKind.UNREACHABLE.exit_code  # fewer nodes than --min-ok
        counts = collections.Counter(failures)
        return min(counts, key=lambda code: (-counts[code], code))

    def summary(self) -> str:
        oks = sum(o.ok for o in self.outcomes)
        kinds = collections.Counter(str(o.error.kind) for o in self.outcomes if o.error)
        detail = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        tail = f"; {detail}" if detail else ""
        return f"{oks}/{len(self.outcomes)} nodes ok in {self.duration:.2f}s{tail}"


def multicall(
    nodes: Sequence[str | Address],
    name: str,
    *args: Any,
    timeout: float = 10.0,
    parallel: int = 32,
    security: Security | None = None,
    lock_wait: float = 0.0,
    **kwargs: Any,
) -> MulticallResult:
    """Call task *name* on every node in parallel; each node gets *timeout* seconds in all
    (a busy task lock is waited for up to *lock_wait* of them)."""

    def call(address: Address, deadline: float, sec: Security) -> Any:
        from rpcctl.client import Client

        with Client(address, timeout=_remaining(deadline), security=sec) as conn:
            return conn.invoke(
                name, args, kwargs, timeout=_remaining(deadline), lock_wait=lock_wait
            )

    return fan_out(nodes, call, timeout=timeout, parallel=parallel, security=security)


def fan_out(
    nodes: Sequence[str | Address],
    action: Callable[[Address, float, Security], Any],
    timeout: float,
    parallel: int = 32,
    security: Security | None = None,
) -> MulticallResult:
    """Run *action(address, deadline, security)* for every node, at most *parallel* at once."""
    security = security or Security.resolve()
    started = time.monotonic()
    outcomes = [Outcome(str(node)) for node in nodes]
    if not outcomes:
        return MulticallResult([], 0.0)

    def one(index: int) -> None:
        outcome = outcomes[index]
        node_started = time.monotonic()
        deadline = node_started + timeout
        try:
            address = nodes[index] if isinstance(nodes[index], Address) else _parse(nodes[index])
            outcome.result = action(address, deadline, security)  # type: ignore[arg-type]
        except RpcctlError as exc:
            outcome.error = exc
        except (OSError, EOFError) as exc:
            outcome.error = Unreachable(f"{outcome.node}: {exc}")
        outcome.duration = time.monotonic() - node_started

    for thread in _in_parallel(one, range(len(outcomes)), parallel):
        thread.join()
    return MulticallResult(outcomes, time.monotonic() - started)


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
) -> MulticallResult:
    """Ping every node through the handshake alone (no RPyC); with *ready*, each app must
    also be ready. With *wait*, keep trying a node that does not answer (yet) until *wait*
    seconds from now: every node has that same deadline, and they are waited for in
    parallel (at most *parallel* at once)."""
    if wait is None:

        def ping(address: Address, deadline: float, sec: Security) -> str:
            _transport.ping(address, _remaining(deadline), sec, ready)
            return "pong"

        return fan_out(nodes, ping, timeout=timeout, parallel=parallel, security=security)

    until = time.monotonic() + wait

    def ping_until(address: Address, _deadline: float, sec: Security) -> str:
        waits.wait_for(address, wait, sec, ready, deadline=until)
        return "pong"

    return fan_out(nodes, ping_until, timeout=wait, parallel=parallel, security=security)


def first_answering(
    nodes: Sequence[str | Address],
    timeout: float = 5.0,
    security: Security | None = None,
    parallel: int = 32,
) -> Address:
    """The node that answers a ping first (for ``--one``); Unreachable when none does.

    At most *parallel* pings are in flight, on daemon threads, so the first answer is used
    at once and slower or dead nodes never hold up the caller (nor its exit).
    """
    security = security or Security.resolve()
    addresses = [_parse(n) for n in nodes]
    answers: queue.SimpleQueue[tuple[Address, str | None]] = queue.SimpleQueue()

    def ping(address: Address) -> None:
        try:
            _transport.ping(address, timeout, security)
        except RpcctlError as exc:
            answers.put((address, exc.message))
        else:
            answers.put((address, None))

    _in_parallel(ping, addresses, parallel)  # not joined: the first answer is enough
    errors = []
    for _ in addresses:
        address, error = answers.get()
        if error is None:
            return address
        errors.append(error)
    msg = f"none of {len(addresses)} nodes answered: " + "; ".join(errors[:3])
    raise Unreachable(msg)


def read_nodes_file(path: str) -> list[str]:
    """Addresses from a file: one a line, ``#`` comments and blank lines ignored."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        msg = f"cannot read nodes file {path}: {exc.strerror}"
        raise ConfigError(msg) from None
    nodes = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            parse_node(text, base_dir=os.path.dirname(os.path.abspath(path)))
        except ConfigError as exc:
            msg = f"{path}:{number}: {exc.message}"
            raise ConfigError(msg) from None
        nodes.append(text)
    return nodes


def discover(spec: str) -> list[str]:
    """``dns:NAME:PORT`` (or ``dns+tls:NAME:PORT``): a node for every A/AAAA record of NAME,
    what a Kubernetes headless service resolves to."""
    scheme = "tcp"
    if spec.startswith("dns+tls:"):
        scheme, rest = "tls", spec.removeprefix("dns+tls:")
    elif spec.startswith("dns:"):
        rest = spec.removeprefix("dns:")
    else:
        msg = f"bad discovery {spec!r}: expected dns:NAME:PORT or dns+tls:NAME:PORT"
        raise ConfigError(msg)
    name, _, port = rest.rpartition(":")
    if not name or not port.isdigit():
        msg = f"bad discovery {spec!r}: expected dns:NAME:PORT"
        raise ConfigError(msg)
    try:
        infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        msg = f"discovery: cannot resolve {name!r} ({exc.strerror})"
        raise Unreachable(msg) from None
    seen: dict[str, None] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        host = str(sockaddr[0])
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        seen.setdefault(f"{scheme}://{shown}:{port}", None)
    return list(seen)


def resolve_nodes(
    nodes: Iterable[str], nodes_file: str | None, discover_spec: str | None
) -> list[str]:
    """The union of -n nodes, a nodes file and discovery, in that order, without repeats."""
    found: dict[str, None] = dict.fromkeys(nodes)
    if nodes_file:
        found.update(dict.fromkeys(read_nodes_file(nodes_file)))
    if discover_spec:
        found.update(dict.fromkeys(discover(discover_spec)))
    return list(found)


def _parse(node: str | Address) -> Address:
    return node if isinstance(node, Address) else parse_node(node)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        msg = "the node's deadline passed"
        raise CallTimeout(msg)
    return remaining
