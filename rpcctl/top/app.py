"""``rpcctl top``'s screen: the fleet table, the running jobs, the drill-down screens.

The app never waits on the network: the pollers (:mod:`rpcctl.top.model`) run on threads
of their own and the app redraws from their snapshots on a timer; a drill-down (stack,
stats, health, a job's output, cancel) runs its call on a worker thread and hands the
answer to the screen with ``call_from_thread``.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Log, Static

from rpcctl import _introspect_render as render
from rpcctl.client import unhealthy_message
from rpcctl.exceptions import AuthenticationFailed, RpcctlError, Unhealthy
from rpcctl.top import columns as cols
from rpcctl.top.model import Fleet, Job, NodeState, Snapshot

REDRAW_SHARE = 0.25
"""The screen redraws from the snapshots every this share of the interval (each node's
new round shows within a fraction of an interval)."""
MIN_REDRAW = 0.1
MAX_REDRAW = 0.5
MESSAGE_SECONDS = 8.0
"""How long a message (a cancel's outcome, a refusal) stays on the status line."""
FOLLOW_WAIT = 1.0
"""Seconds one events() request of a followed job waits for new lines."""

CSS = """
.title { height: 1; background: $primary-background; }
#nodes { height: 1fr; min-height: 4; }
#jobs { height: 1fr; min-height: 3; }
#status { height: 1; }
ConfirmScreen { align: center bottom; }
ConfirmScreen #confirm { height: 1; width: 100%; background: $warning; color: $text; }
"""


class TopApp(App[int]):
    """The live view of *fleet*; exits with 0 on ``q``."""

    TITLE = "rpcctl top"
    CSS = CSS
    BINDINGS: ClassVar[list[BindingType]] = [Binding("q", "quit_top", "Quit")]

    def __init__(self, fleet: Fleet, prog: str = "rpcctl") -> None:
        super().__init__()
        self.fleet = fleet
        self.prog = prog

    def get_default_screen(self) -> FleetScreen:
        return FleetScreen(self.fleet, self.prog)

    @property
    def fleet_screen(self) -> FleetScreen:
        screen = self.screen_stack[0]
        assert isinstance(screen, FleetScreen)
        return screen

    def on_unmount(self) -> None:
        self.fleet.stop()

    def action_quit_top(self) -> None:
        self.exit(0)


class FleetScreen(Screen[None]):
    """The fleet table, the running jobs, the status line."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("s", "detail('stack')", "Stack"),
        Binding("t", "detail('stats')", "Stats"),
        Binding("h", "detail('health')", "Health"),
        Binding("enter", "follow", "Output", show=True),
        Binding("c", "cancel_job", "Cancel job"),
        Binding("tab", "switch_table", "Nodes/Jobs"),
    ]

    def __init__(self, fleet: Fleet, prog: str) -> None:
        super().__init__()
        self.fleet = fleet
        self.prog = prog
        self.snapshot: Snapshot = fleet.snapshot()
        names = [p.short for p in fleet.pollers]
        self._node_columns = cols.node_columns(cols.name_width(names))
        self._job_columns = cols.job_columns(cols.name_width(names))
        self._shown: dict[str, tuple[str, ...]] = {}  # the columns each table shows now
        self._rows: dict[str, dict[str, tuple[str, ...]]] = {"nodes": {}, "jobs": {}}
        self._jobs: dict[str, Job] = {}  # row key -> the job
        self._message: tuple[float, str] | None = None
        self.redraw_times: collections.deque[float] = collections.deque(maxlen=1000)
        """Seconds each recent redraw took (bench/top_fleet.py reads them)."""

    def compose(self) -> ComposeResult:
        yield Static(id="summary", classes="title")
        nodes: DataTable[Text] = DataTable(id="nodes", cursor_type="row", zebra_stripes=True)
        yield nodes
        yield Static("JOBS", id="jobs-title", classes="title")
        jobs: DataTable[Text] = DataTable(id="jobs", cursor_type="row")
        yield jobs
        yield Static(id="status")
        yield Footer()

    def on_mount(self) -> None:
        interval = self.fleet.interval
        self.fleet.start()
        self.set_interval(max(MIN_REDRAW, min(MAX_REDRAW, interval * REDRAW_SHARE)), self.redraw)
        self.redraw()
        self.query_one("#nodes", DataTable).focus()

    def on_resize(self) -> None:
        self.redraw()

    # -- drawing ------------------------------------------------------------------------------

    def redraw(self) -> None:
        started = time.perf_counter()
        self.snapshot = snap = self.fleet.snapshot()
        width = self.size.width
        when = time.strftime("%H:%M:%S", time.localtime(snap.taken_at))
        self.query_one("#summary", Static).update(
            Text(f" {self.prog} top  {snap.summary()}  every {snap.interval_s:g}s  {when}")
        )
        nodes = {n.node: n for n in snap.shown}
        self._fill(
            "nodes", self._node_columns, width, [(n.node, n, _node_style(n)) for n in snap.shown]
        )
        jobs = {f"{j.node} {j.id}": j for j in snap.jobs}
        self._jobs = jobs
        self._fill("jobs", self._job_columns, width, [(k, j, "") for k, j in jobs.items()])
        self.query_one("#jobs-title", Static).update(
            Text(f" JOBS  {len(jobs)} running" + ("  (enter: output, c: cancel)" if jobs else ""))
        )
        self._status(nodes)
        self.redraw_times.append(time.perf_counter() - started)

    def _fill(
        self,
        name: str,
        columns: Sequence[cols.Column[Any]],
        width: int,
        rows: list[tuple[str, Any, str]],
    ) -> None:
        """Show *rows* (key, value, style) in table *name*: only cells that changed are
        redrawn; the columns are rebuilt when the width lets more or fewer of them fit."""
        table: DataTable[Text] = self.query_one(f"#{name}", DataTable)
        fitted = cols.fit(columns, width - 2)
        keys = tuple(c.key for c in fitted)
        drawn = self._rows[name]
        if self._shown.get(name) != keys:
            table.clear(columns=True)
            for column in fitted:
                table.add_column(column.label, width=column.width, key=column.key)
            self._shown[name] = keys
            drawn.clear()
        wanted = {key for key, _value, _style in rows}
        for gone in [key for key in drawn if key not in wanted]:
            table.remove_row(gone)
            del drawn[gone]
        for key, value, style in rows:
            texts = (*cols.cells(fitted, value), style)
            if key not in drawn:
                table.add_row(*(Text(t, style=style) for t in texts[:-1]), key=key)
            elif drawn[key] != texts:
                for column, text in zip(fitted, texts[:-1], strict=True):
                    table.update_cell(key, column.key, Text(text, style=style))
            drawn[key] = texts

    def _status(self, nodes: dict[str, NodeState]) -> None:
        """The status line: a recent message, else the highlighted node in full."""
        line = ""
        if self._message is not None and time.monotonic() - self._message[0] < MESSAGE_SECONDS:
            line = self._message[1]
        else:
            self._message = None
            node = nodes.get(self.selected_node() or "")
            if node is not None:
                line = _describe(node)
        self.query_one("#status", Static).update(Text(line))

    @property
    def message(self) -> str:
        """The status line's message now ("" when none)."""
        return self._message[1] if self._message is not None else ""

    def say(self, message: str) -> None:
        """A message on the status line, for a few seconds (from the UI thread)."""
        self._message = (time.monotonic(), message)
        self.query_one("#status", Static).update(Text(message))

    # -- what is selected ---------------------------------------------------------------------

    def _row_key(self, name: str) -> str | None:
        table: DataTable[Text] = self.query_one(f"#{name}", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return str(key) if key is not None else None

    def selected_job(self) -> Job | None:
        key = self._row_key("jobs")
        return self._jobs.get(key) if key is not None else None

    def selected_node(self) -> str | None:
        """The node of the focused table's highlighted row (a job's node in the jobs table)."""
        if self.app.focused is not None and self.app.focused.id == "jobs":
            job = self.selected_job()
            if job is not None:
                return job.node
        return self._row_key("nodes")

    # -- keys ---------------------------------------------------------------------------------

    def action_switch_table(self) -> None:
        focused = self.app.focused
        other = "jobs" if focused is not None and focused.id == "nodes" else "nodes"
        self.query_one(f"#{other}", DataTable).focus()

    def action_detail(self, what: str) -> None:
        node = self.selected_node()
        if node is None:
            self.say("no node selected")
            return
        self.app.push_screen(DetailScreen(self.fleet, node, what))

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "jobs":
            self.action_follow()
        else:
            self.action_detail("stats")

    def action_follow(self) -> None:
        job = self.selected_job()
        if job is None:
            self.say("no job selected: tab moves to the jobs table")
            return
        self.app.push_screen(FollowScreen(self.fleet, job))

    def action_cancel_job(self) -> None:
        job = self.selected_job()
        if job is None:
            self.say("no job selected: tab moves to the jobs table, then c cancels one")
            return
        question = f"Cancel job {job.id} ({job.task}) on {job.short}? y/n"

        def answered(yes: bool | None) -> None:
            if yes:
                self.say(f"cancelling job {job.id} on {job.short}…")
                self.run_worker(
                    lambda: self._cancel(job), thread=True, group="cancel", exit_on_error=False
                )
            else:
                self.say("not cancelled")

        self.app.push_screen(ConfirmScreen(question), answered)

    def _cancel(self, job: Job) -> None:
        """On a worker thread: ask the agent to cancel *job*; the outcome on the status line."""
        try:
            with self.fleet.connect(job.node) as conn:
                answer = conn.cancel(job.id)
            message = f"job {job.id} on {job.short}: cancel requested ({answer.get('state')})"
        except AuthenticationFailed as exc:
            message = f"refused: {exc.message} (the identity lacks the grant to cancel)"
        except RpcctlError as exc:
            message = f"cancel failed: {exc.message}"
        except (OSError, EOFError) as exc:
            message = f"cancel failed: {job.node}: {exc}"
        _from_thread(self.app, self.say, message)


class DetailScreen(Screen[None]):
    """One node's stack, stats or health, asked once on a worker thread (r asks again)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape,q", "app.pop_screen", "Back"),
        Binding("r", "fetch", "Again"),
    ]

    def __init__(self, fleet: Fleet, node: str, what: str) -> None:
        super().__init__()
        self.fleet = fleet
        self.node = node
        self.what = what
        self.text = ""  # what the screen shows (tests read it)

    def compose(self) -> ComposeResult:
        yield Static(Text(f" {self.what}: {self.node}"), id="detail-title", classes="title")
        with VerticalScroll():
            yield Static(Text(f"asking {self.node} for its {self.what}…"), id="detail")
        yield Footer()

    def on_mount(self) -> None:
        self.action_fetch()

    def action_fetch(self) -> None:
        self.run_worker(self._fetch, thread=True, exclusive=True, exit_on_error=False)

    def _fetch(self) -> None:
        try:
            with self.fleet.connect(self.node) as conn:
                text = _ask(conn, self.what)
        except AuthenticationFailed as exc:
            text = f"refused: {exc.message}\n(the identity lacks the grant for {self.what})\n"
        except RpcctlError as exc:
            text = f"{exc.kind}: {exc.message}\n"
        except (OSError, EOFError) as exc:
            text = f"unreachable: {self.node}: {exc}\n"
        _from_thread(self.app, self._show, text)

    def _show(self, text: str) -> None:
        self.text = text
        if not self.is_attached:  # left before the answer came
            return
        self.query_one("#detail", Static).update(Text(text))


def _ask(conn: Any, what: str) -> str:
    if what == "stack":
        return render.stack(conn.stack())
    if what == "stats":
        return render.stats(conn.stats())
    try:
        report = conn.health()
    except Unhealthy as exc:
        return f"{exc.message}\n\n" + render.health(exc.checks)
    return render.health(report["checks"])


class FollowScreen(Screen[None]):
    """A job's output as it comes, like ``rpcctl logs -f``: from its first kept line."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,q", "app.pop_screen", "Back")]

    def __init__(self, fleet: Fleet, job: Job) -> None:
        super().__init__()
        self.fleet = fleet
        self.job = job
        self.lines: list[str] = []  # what was written (tests read it)
        self._stop = threading.Event()

    def compose(self) -> ComposeResult:
        job = self.job
        title = f" output of job {job.id} ({job.task}) on {job.short}: esc goes back"
        yield Static(Text(title), id="follow-title", classes="title")
        yield Log(id="output", highlight=False)
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._follow, thread=True, exclusive=True, exit_on_error=False)

    def on_unmount(self) -> None:
        self._stop.set()

    def write(self, line: str) -> None:
        self.lines.append(line)
        if not self.is_attached:  # left while a line was on its way
            return
        self.query_one("#output", Log).write_line(line)

    def _follow(self) -> None:
        """On a worker thread: read the job's events until it ends or the screen closes."""
        cursor = 0
        try:
            with self.fleet.connect(self.job.node, self.fleet.timeout + FOLLOW_WAIT) as conn:
                while not self._stop.is_set():
                    snap = conn.events(self.job.id, cursor, FOLLOW_WAIT)
                    cursor = int(snap.get("cursor") or cursor)
                    for line in _event_lines(snap):
                        _from_thread(self.app, self.write, line)
                    if snap.get("state") != "running":
                        outcome = f"-- job {snap.get('state')} after {snap.get('duration_s')}s"
                        _from_thread(self.app, self.write, outcome)
                        return
        except AuthenticationFailed as exc:
            _from_thread(self.app, self.write, f"refused: {exc.message}")
        except RpcctlError as exc:
            _from_thread(self.app, self.write, f"-- {exc.kind}: {exc.message}")
        except (OSError, EOFError) as exc:
            _from_thread(self.app, self.write, f"-- unreachable: {exc}")


def _event_lines(snap: dict[str, Any]) -> list[str]:
    lines = []
    if snap.get("dropped"):
        lines.append(f"-- {snap['dropped']} earlier events were dropped by the agent")
    for event in snap.get("events") or []:
        kind = event.get("type")
        if kind == "stdout":
            lines.append(str(event.get("line", "")))
        elif kind == "stderr":
            lines.append(f"stderr: {event.get('line', '')}")
        elif kind == "progress":
            done, total = event.get("done"), event.get("total")
            count = f"{done}/{total}" if total else f"{done}"
            lines.append(f"progress: {count} {event.get('message') or ''}".rstrip())
    return lines


class ConfirmScreen(ModalScreen[bool]):
    """One line at the bottom asking y/n."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        yield Static(Text(f" {self.question}"), id="confirm")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)


def _node_style(node: NodeState) -> str:
    if node.polled_at is None:
        return "dim"
    if not node.up:
        return "bold red"
    if node.health.ok is False:
        return "yellow"
    return ""


def _describe(node: NodeState) -> str:
    """The highlighted node in one line: its address, and what is wrong or special."""
    parts = [node.node]
    if not node.up and node.reason and node.polled_at is not None:
        parts.append(f"down: {node.reason}")
    if node.up and node.health.ok is False:
        parts.append(unhealthy_message(list(node.health.checks)))
    if node.drained:
        parts.append(f"drained by {node.drained.get('by')}")
    if node.refused:
        parts.append("refused: " + ", ".join(sorted(node.refused)) + " (grant missing)")
    return "  ".join(parts)


def _from_thread(app: App[Any], call: Callable[..., Any], *args: Any) -> None:
    """*call(*args)* on the app's thread; nothing once the app has stopped."""
    if not app.is_running:
        return
    try:
        app.call_from_thread(call, *args)
    except RuntimeError:  # the app stopped between the check and the call
        return
