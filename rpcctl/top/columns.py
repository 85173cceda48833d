"""The columns of ``rpcctl top``'s tables: what each cell shows, how wide it is, and which
columns drop first when the terminal is narrow (plain text, no Textual: the tests and
``--once`` read the same cells)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from rpcctl._introspect_render import duration
from rpcctl.top.model import Job, NodeState, Progress

Row = TypeVar("Row", NodeState, Job)

CELL_PADDING = 2
"""What a table adds to each column's width (a space either side)."""
BAR_WIDTH = 10
"""Characters of a progress bar."""


@dataclass(frozen=True)
class Column(Generic[Row]):
    """One column: *priority* 0 never drops; higher numbers drop first."""

    key: str
    label: str
    width: int
    priority: int
    cell: Callable[[Row], str]


def fit(columns: Sequence[Column[Row]], width: int) -> list[Column[Row]]:
    """The columns that fit in *width* characters, taken by priority until one does not fit,
    shown in their own order."""
    kept: set[str] = set()
    used = 0
    for column in sorted(columns, key=lambda c: c.priority):
        need = column.width + CELL_PADDING
        if column.priority > 0 and used + need > width:
            break  # strictly by priority: no less needed column fills the gap
        kept.add(column.key)
        used += need
    return [c for c in columns if c.key in kept]


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


# -- the fleet table ---------------------------------------------------------------------------


def state(node: NodeState) -> str:
    """ready / not ready / drained / down / waiting (before the first answer)."""
    if node.polled_at is None:
        return "waiting"
    if not node.up:
        return "DOWN"
    if node.drained:
        return "drained"
    if node.ready is None:
        return "-"
    return "ready" if node.ready else "not ready"


def health(node: NodeState) -> str:
    """ok, the failing checks' names, why the node is down, or why health was not asked."""
    if node.polled_at is None:
        return ""
    if not node.up:  # the address is in the node column already
        return (node.reason or "down").removeprefix(f"{node.node}: ")
    if node.health.ok is None:
        return "refused" if "health" in node.refused else "?"
    if node.health.ok:
        return "ok"
    return "✗ " + ", ".join(node.health.failing)


def _number(value: float | int | None, fmt: str = "{}") -> str:
    return "" if value is None else fmt.format(value)


def rss(node: NodeState) -> str:
    return "" if node.rss_bytes is None else f"{node.rss_bytes / (1 << 20):.0f} MiB"


def lag(node: NodeState) -> str:
    if not node.event_loop:
        return "-" if node.up else ""
    if node.loop_lag_ms is None:
        return "blocked" if node.health.ok is False else "?"
    return f"{node.loop_lag_ms:.1f} ms"


def node_columns(name_width: int) -> list[Column[NodeState]]:
    return [
        Column("node", "NODE", name_width, 0, lambda n: clip(n.short, name_width)),
        Column("app", "APP", 12, 8, lambda n: clip(n.app or "", 12)),
        Column("version", "VERSION", 10, 3, lambda n: clip(n.version or "-", 10) if n.app else ""),
        Column("pid", "PID", 7, 10, lambda n: _number(n.pid)),
        Column(
            "uptime",
            "UPTIME",
            8,
            7,
            lambda n: "" if n.uptime_s is None or not n.up else duration(n.uptime_s),
        ),
        Column("state", "STATE", 9, 2, state),
        Column("health", "HEALTH", 22, 1, lambda n: clip(health(n), 22)),
        Column("rss", "RSS", 8, 6, rss),
        Column("cpu", "CPU%", 5, 5, lambda n: _number(n.cpu_percent, "{:.1f}")),
        Column("threads", "THR", 4, 11, lambda n: _number(n.threads)),
        Column("jobs", "JOBS", 4, 4, lambda n: str(len(n.jobs)) if n.up else ""),
        Column("lag", "LAG", 8, 9, lag),
    ]


# -- the jobs table ----------------------------------------------------------------------------


def progress(value: Progress | None) -> str:
    """``███░░░░░░░  30% step 3``, or ``12 rows`` without a total."""
    if value is None:
        return ""
    message = f" {value.message}" if value.message else ""
    fraction = value.fraction
    if fraction is None:
        return f"{_plain(value.done)}{message}"
    filled = round(BAR_WIDTH * fraction)
    bar = "█" * filled + "░" * (BAR_WIDTH - filled)
    return f"{bar} {fraction * 100:3.0f}%{message}"


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else f"{number:g}"


def job_columns(name_width: int) -> list[Column[Job]]:
    return [
        Column("task", "TASK", 24, 0, lambda j: clip(j.task, 24)),
        Column("node", "NODE", name_width, 0, lambda j: clip(j.short, name_width)),
        Column("caller", "CALLER", 16, 3, lambda j: clip(j.caller, 16)),
        Column("elapsed", "ELAPSED", 8, 2, lambda j: duration(j.elapsed_s)),
        Column("progress", "PROGRESS", 26, 1, lambda j: clip(progress(j.progress), 26)),
        Column("id", "JOB", 8, 4, lambda j: j.id),
    ]


def name_width(names: Sequence[str]) -> int:
    """The node column's width: the longest short name, within 6..24."""
    return max(6, min(24, max((len(n) for n in names), default=6)))


def cells(columns: Sequence[Column[Row]], row: Row) -> tuple[str, ...]:
    return tuple(column.cell(row) for column in columns)
