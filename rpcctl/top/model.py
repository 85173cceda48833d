"""What ``rpcctl top`` shows: every node's state, polled off the caller's thread.

One poller thread per node keeps one connection to its agent and, every *interval*, asks
``info`` (app, version, pid, readiness, drain, running jobs), ``stats`` (RSS, CPU time,
threads), ``health`` (the checks, the event loop's lag) and, for each running job, its
newest events (the progress bar). Every call has the node's deadline, so a dead or
black-holed node costs its own thread that deadline and nobody else anything; a node whose
round errs is shown down with the reason, and its poller reconnects on the next round.

Readers (the Textual app, ``--once --json``) take a :class:`Snapshot`: plain data built
from the last finished round of each node, never waiting on the network. Textual is not
imported here: ``--once --json`` and scripts need none.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from app_agent.wire.words import plural
from rpcctl._nodes import parse_node
from rpcctl._transport import Security
from rpcctl._where import Skipped, Where
from rpcctl.client import Client
from rpcctl.exceptions import (
    AuthenticationFailed,
    RpcctlError,
    Unhealthy,
    Unreachable,
    UsageError,
)

DEFAULT_INTERVAL = 1.5
"""Seconds between two rounds of one node."""
MIN_INTERVAL = 0.2
"""The shortest interval taken: faster would only load the agents."""
HEALTH_BUDGET_SHARE = 0.5
"""The share of a node's deadline its health checks may take (the rest: the other calls)."""

_LAG = re.compile(r"lag ([0-9.]+) ms")


@dataclass(frozen=True)
class Progress:
    """A job's last ``app_agent.progress(done, total, message)``."""

    done: float
    total: float | None
    message: str | None

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return max(0.0, min(float(self.done) / float(self.total), 1.0))


@dataclass(frozen=True)
class Job:
    """A running job of one node."""

    node: str
    short: str
    id: str
    task: str
    caller: str
    elapsed_s: float
    progress: Progress | None = None

    def to_dict(self) -> dict[str, Any]:
        progress = self.progress
        return {
            "node": self.node,
            "id": self.id,
            "task": self.task,
            "caller": self.caller,
            "elapsed_s": round(self.elapsed_s, 3),
            "progress": None
            if progress is None
            else {"done": progress.done, "total": progress.total, "message": progress.message},
        }


@dataclass(frozen=True)
class Health:
    """The node's health checks: ``ok`` None until asked (or when refused)."""

    ok: bool | None = None
    failing: tuple[str, ...] = ()
    checks: tuple[dict[str, Any], ...] = ()


@dataclass(frozen=True)
class NodeState:
    """One node as its last round found it. ``up`` False: ``reason`` says why (and
    ``exit_code`` is the one the CLI would exit with for that failure)."""

    node: str
    short: str
    up: bool = False
    reason: str | None = "not asked yet"
    exit_code: int = 0
    skipped: str | None = None  # --where left it out: why
    app: str | None = None
    version: str | None = None
    pid: int | None = None
    uptime_s: float | None = None
    ready: bool | None = None
    drained: dict[str, Any] | None = None
    health: Health = field(default_factory=Health)
    rss_bytes: int | None = None
    cpu_percent: float | None = None
    threads: int | None = None
    jobs: tuple[Job, ...] = ()
    event_loop: bool = False
    loop_lag_ms: float | None = None
    refused: dict[str, str] = field(default_factory=dict)  # what -> the agent's message
    polled_at: float | None = None  # time.time() of the round's end
    round_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "short": self.short,
            "up": self.up,
            "reason": self.reason,
            "exit_code": self.exit_code,
            "skipped": self.skipped,
            "app": self.app,
            "version": self.version,
            "pid": self.pid,
            "uptime_s": self.uptime_s,
            "ready": self.ready,
            "drained": self.drained,
            "health": {
                "ok": self.health.ok,
                "failing": list(self.health.failing),
                "checks": list(self.health.checks),
            },
            "rss_bytes": self.rss_bytes,
            "cpu_percent": None if self.cpu_percent is None else round(self.cpu_percent, 1),
            "threads": self.threads,
            "jobs": len(self.jobs),
            "event_loop": self.event_loop,
            "loop_lag_ms": self.loop_lag_ms,
            "refused": dict(self.refused),
            "polled_at": self.polled_at,
            "round_s": None if self.round_s is None else round(self.round_s, 3),
        }


@dataclass(frozen=True)
class Snapshot:
    """Every node (in the order given) and the fleet's running jobs (longest running first)."""

    nodes: tuple[NodeState, ...]
    taken_at: float
    interval_s: float

    @property
    def shown(self) -> tuple[NodeState, ...]:
        """The nodes --where kept."""
        return tuple(n for n in self.nodes if n.skipped is None)

    @property
    def jobs(self) -> tuple[Job, ...]:
        found = [job for node in self.shown if node.up for job in node.jobs]
        return tuple(sorted(found, key=lambda j: (-j.elapsed_s, j.node, j.id)))

    def summary(self) -> str:
        shown = self.shown
        up = sum(n.up for n in shown)
        sick = sum(n.up and n.health.ok is False for n in shown)
        text = f"{up}/{plural(len(shown), 'node')} up"
        if sick:
            text += f", {sick} unhealthy"
        text += f", {plural(len(self.jobs), 'job')} running"
        if len(shown) < len(self.nodes):
            text += f", {len(self.nodes) - len(shown)} skipped by --where"
        return text

    def exit_code(self) -> int:
        """0 when every node kept answered; else the most frequent failure's exit code
        (ties: the lower), as the other fleet commands count."""
        codes = [n.exit_code for n in self.shown if not n.up]
        if not codes:
            return 0 if self.shown or not self.nodes else Unreachable.exit_code
        return min(set(codes), key=lambda code: (-codes.count(code), code))

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "interval_s": self.interval_s,
            "summary": self.summary(),
            "nodes": [n.to_dict() for n in self.nodes],
            "jobs": [j.to_dict() for j in self.jobs],
        }


class NodePoller:
    """One node: a kept connection, one round every *interval* on a daemon thread of its own.

    ``state`` is replaced (never changed) at the end of each round, so a reader takes it
    without a lock.
    """

    def __init__(
        self,
        node: str,
        short: str,
        security: Security,
        where: Where,
        interval: float,
        timeout: float,
    ) -> None:
        self.node = node
        self.short = short
        self.security = security
        self.where = where
        self.interval = interval
        self.timeout = timeout
        self.state = NodeState(node, short)
        self.round_started: float | None = None  # monotonic; None between rounds
        self._conn: Client | None = None
        self._cpu: tuple[float, float] | None = None  # (monotonic, CPU seconds) last round
        self._cursors: dict[str, int] = {}  # job id -> the next event to read
        self._progress: dict[str, Progress] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name=f"rpcctl-top {self.short}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop polling; the thread ends when its round does (within the node's deadline)."""
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        self._disconnect()

    def poll(self) -> NodeState:
        """One round: the node's new state (also kept in ``state``)."""
        started = self.round_started = time.monotonic()
        try:
            state = self._round()
        except Skipped as skipped:
            state = NodeState(self.node, self.short, reason=None, skipped=skipped.reason)
        except RpcctlError as exc:
            state = self._down(exc.message, exc.exit_code)
        except (OSError, EOFError) as exc:
            state = self._down(f"{self.node}: {exc}", Unreachable.exit_code)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            # An agent whose answers lack what this rpcctl reads (another version's): down
            # with why, rather than a poller thread that dies and a row that never changes.
            reason = f"unexpected answer from the agent ({type(exc).__name__}: {exc})"
            state = self._down(reason, UsageError.exit_code)
        self.state = replace(state, polled_at=time.time(), round_s=time.monotonic() - started)
        self.round_started = None
        return self.state

    def _down(self, reason: str, exit_code: int) -> NodeState:
        self._disconnect()
        self._cpu = None
        previous = self.state
        # What it last reported stays in view (greyed), with why it is down now.
        return replace(previous, up=False, reason=reason, exit_code=exit_code or 3, jobs=())

    def _disconnect(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(RpcctlError, OSError, EOFError):
                conn.close()

    def _round(self) -> NodeState:
        if self._conn is None:
            self._conn = Client(parse_node(self.node), self.timeout, self.security)
        conn = self._conn
        refused: dict[str, str] = {}
        info = conn.info()
        if self.where:
            self.where.check({**conn.handshake, **info})
        stats = _allowed(refused, "stats", conn.stats)
        health = self._health(conn, refused)
        now = time.monotonic()
        cpu_percent = None
        threads = rss = None
        if stats is not None:
            cpu = float(stats["cpu"]["user_s"]) + float(stats["cpu"]["system_s"])
            if self._cpu is not None and now > self._cpu[0]:
                cpu_percent = max(0.0, 100.0 * (cpu - self._cpu[1]) / (now - self._cpu[0]))
            self._cpu = (now, cpu)
            threads = stats["threads"].get("os") or stats["threads"].get("python")
            rss = stats["memory"].get("rss_bytes")
        return NodeState(
            self.node,
            self.short,
            up=True,
            reason=None,
            app=info.get("app"),
            version=info.get("version"),
            pid=info.get("pid"),
            uptime_s=info.get("uptime_s"),
            ready=info.get("ready"),
            drained=info.get("drained"),  # {by, since} or None, from agents that drain
            health=health,
            rss_bytes=rss,
            cpu_percent=cpu_percent,
            threads=threads,
            jobs=self._jobs(conn, info.get("jobs") or [], refused),
            event_loop=bool(info.get("event_loop")),
            loop_lag_ms=_loop_lag(health),
            refused=refused,
        )

    def _health(self, conn: Client, refused: dict[str, str]) -> Health:
        try:
            report = _allowed(
                refused, "health", lambda: conn.health(self.timeout * HEALTH_BUDGET_SHARE)
            )
        except Unhealthy as exc:
            checks = tuple(exc.checks)
            return Health(False, tuple(c["name"] for c in checks if not c["ok"]), checks)
        if report is None:
            return Health()
        return Health(True, (), tuple(report.get("checks") or ()))

    def _jobs(
        self, conn: Client, listed: list[dict[str, Any]], refused: dict[str, str]
    ) -> tuple[Job, ...]:
        running = [j for j in listed if j.get("state", "running") == "running"]
        ids = {str(j["id"]) for j in running}
        for gone in set(self._cursors) - ids:
            self._cursors.pop(gone, None)
            self._progress.pop(gone, None)
        jobs = []
        for j in running:
            job_id = str(j["id"])
            if "progress" not in refused:
                self._read_progress(conn, job_id, refused)
            jobs.append(
                Job(
                    self.node,
                    self.short,
                    job_id,
                    str(j.get("task")),
                    str(j.get("caller")),
                    float(j.get("duration_s") or 0.0),
                    self._progress.get(job_id),
                )
            )
        return tuple(jobs)

    def _read_progress(self, conn: Client, job_id: str, refused: dict[str, str]) -> None:
        """The job's events since the last round: its newest progress event, if any."""
        try:
            snapshot = _allowed(
                refused, "progress", lambda: conn.events(job_id, self._cursors.get(job_id, 0))
            )
        except RpcctlError as exc:
            if exc.exit_code != 2:  # 2: the job ended between info and now
                raise
            return
        if snapshot is None:
            return
        self._cursors[job_id] = int(snapshot.get("cursor") or 0)
        for event in reversed(snapshot.get("events") or []):
            if event.get("type") == "progress":
                self._progress[job_id] = Progress(
                    event.get("done") or 0, event.get("total"), event.get("message")
                )
                break


def _allowed(refused: dict[str, str], what: str, call: Callable[[], Any]) -> Any:
    """*call()*, or None when the identity lacks the grant (noted in *refused*)."""
    try:
        return call()
    except AuthenticationFailed as exc:
        refused[what] = exc.message
        return None


def _loop_lag(health: Health) -> float | None:
    for check in health.checks:
        if check.get("name") == "agent.event_loop":
            found = _LAG.search(str(check.get("message") or ""))
            return float(found.group(1)) if found else None
    return None


class Fleet:
    """The nodes ``rpcctl top`` watches, each with its own poller."""

    def __init__(
        self,
        nodes: Sequence[str],
        security: Security | None = None,
        where: Where | None = None,
        interval: float = DEFAULT_INTERVAL,
        timeout: float | None = None,
    ) -> None:
        self.interval = interval
        self.timeout = timeout if timeout is not None else default_timeout(interval)
        security = security or Security.resolve()
        names = short_names(nodes)
        self.pollers = [
            NodePoller(node, names[node], security, where or Where(), interval, self.timeout)
            for node in nodes
        ]

    def start(self) -> None:
        for poller in self.pollers:
            poller.start()

    def stop(self) -> None:
        for poller in self.pollers:
            poller.stop()

    def snapshot(self) -> Snapshot:
        """The last round of every node, now (a node stuck in a round past its deadline
        and an interval is shown down, though its thread has not come back yet)."""
        now = time.monotonic()
        states = []
        for poller in self.pollers:
            state = poller.state
            began = poller.round_started
            if began is not None and state.up and now - began > self.timeout + self.interval:
                reason = f"no answer for {now - began:.1f}s (deadline {self.timeout:g}s)"
                state = replace(state, up=False, reason=reason, exit_code=4, jobs=())
            states.append(state)
        return Snapshot(tuple(states), time.time(), self.interval)

    def poll_once(self) -> Snapshot:
        """One round of every node, in parallel, for ``--once``. Each call of a round has
        the node's deadline; a node whose round is not over after twice that is shown down
        (its thread, a daemon, is left behind)."""
        threads = [threading.Thread(target=p.poll, daemon=True) for p in self.pollers]
        for thread in threads:
            thread.start()
        limit = 2 * self.timeout
        until = time.monotonic() + limit
        for thread in threads:
            thread.join(max(0.0, until - time.monotonic()))
        states = []
        for poller, thread in zip(self.pollers, threads, strict=True):
            state = poller.state
            if thread.is_alive():
                reason = f"no answer within {limit:g}s"
                state = replace(state, up=False, reason=reason, exit_code=4, polled_at=time.time())
            else:
                poller._disconnect()
            states.append(state)
        return Snapshot(tuple(states), time.time(), self.interval)

    def poller(self, node: str) -> NodePoller:
        return next(p for p in self.pollers if p.node == node)

    def connect(self, node: str, timeout: float | None = None) -> Client:
        """A connection of its own to *node* (the drill-down screens, cancel): the poller's
        stays with the poller's thread."""
        poller = self.poller(node)
        return Client(parse_node(node), timeout or self.timeout, poller.security)


def default_timeout(interval: float) -> float:
    """A node's deadline per round: two intervals (at least 2 s), so a node that stops
    answering shows down within one or two refreshes."""
    return max(2.0, 2 * interval)


_SEPARATORS = re.compile(r"[/:]")  # not ".": 10.0.0.1 and 10.0.0.2 stay whole


def short_names(nodes: Sequence[str]) -> dict[str, str]:
    """Each node's shortest form that still tells it apart: what the addresses share at
    their start and end (between separators) is cut; one node keeps its address without
    its scheme."""
    if len(nodes) <= 1:
        return {n: _without_scheme(n) for n in nodes}
    tokens = [_SEPARATORS.split(n) for n in nodes]
    first = tokens[0]
    head = 0
    while all(len(t) > head + 1 and t[head] == first[head] for t in tokens):
        head += 1
    tail = 0
    while all(len(t) - head > tail + 1 and t[-1 - tail] == first[-1 - tail] for t in tokens):
        tail += 1
    names = {}
    for node, parts in zip(nodes, tokens, strict=True):
        names[node] = _join(node, head, len(parts) - tail)
    if len(set(names.values())) < len(set(nodes)):  # two differ only in their separators
        return {n: _without_scheme(n) for n in nodes}
    return names


def _join(node: str, start: int, end: int) -> str:
    """The text of *node* from its token *start* up to token *end* (exclusive), with the
    separators between them."""
    spans = []
    position = 0
    for token in _SEPARATORS.split(node):
        spans.append((position, position + len(token)))
        position += len(token) + 1
    text = node[spans[start][0] : spans[end - 1][1]]
    return text or _without_scheme(node)


def _without_scheme(node: str) -> str:
    for scheme in ("unix:", "tcp://", "tls://"):
        if node.startswith(scheme):
            rest = node.removeprefix(scheme)
            return os.path.basename(rest) if scheme == "unix:" and "/" in rest else rest
    return node
