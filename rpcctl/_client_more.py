"""The client's calls beyond tasks and jobs: introspection (stack, stats, health, profile,
mem, log levels) and the remote console. :class:`rpcctl.client.Client` inherits them."""

from __future__ import annotations

from rpcctl.exceptions import Unhealthy, UsageError

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from app_agent.wire import Address


class MoreCalls:
    """Introspection and console requests, on :class:`Client`'s connection."""

    address: Address
    timeout: float

    if TYPE_CHECKING:

        def _request(self, method: str, timeout: float | None, *args: Any) -> Any: ...

        def _reply(self, text: Any) -> Any: ...

    # -- introspection (agent side: app_agent/_introspect.py, _health.py, _profile.py, _mem.py)

    def stack(self) -> dict[str, Any]:
        """Every thread's frames (innermost last), agent threads marked, and the asyncio
        tasks of the app's event loop (``None`` when the agent runs on none)."""
        result: dict[str, Any] = self._reply(self._newer_request("stack", self.timeout))
        return result

    def stats(self, objects: int = 0) -> dict[str, Any]:
        """pid, uptime, memory, CPU, threads, descriptors, GC, versions; with *objects*, the
        most common object types by count."""
        result: dict[str, Any] = self._reply(self._newer_request("stats", self.timeout, objects))
        return result

    def health(self, timeout: float = 10.0) -> dict[str, Any]:
        """Run the app's health checks and the agent's built-in ones (each fails after its
        own timeout, and none runs past *timeout* seconds): the report when all pass;
        Unhealthy, with every check's outcome in ``.checks``, when one fails."""
        report: dict[str, Any] = self._reply(
            self._newer_request("health", timeout + self.timeout, float(timeout))
        )
        if not report.get("healthy"):
            raise Unhealthy(unhealthy_message(report["checks"]), report["checks"])
        return report

    def profile(self, seconds: float, rate: float = 100.0, idle: bool = False) -> dict[str, Any]:
        """Sample every thread's stack *rate* times a second for *seconds*: the frames and the
        counted stacks (rpcctl._flamegraph turns them into collapsed stacks, speedscope or
        SVG). Busy while another profile of the app runs."""
        result: dict[str, Any] = self._reply(
            self._newer_request(
                "profile", seconds + self.timeout, float(seconds), float(rate), idle
            )
        )
        return result

    def mem(self, seconds: float = 10.0, top: int = 10, group_by: str = "line") -> dict[str, Any]:
        """Trace the app's allocations (tracemalloc) for *seconds*: the *top* allocation sites
        that grew, grouped by ``line`` (the app's frame), ``file`` or ``traceback``, with
        ``{top: [{file, line, size_diff, count_diff, traceback, ...}], seconds, overhead,
        tracing}``. Tracing stops after, and as soon as this connection closes. Busy while
        another diagnosis of the app runs."""
        result: dict[str, Any] = self._reply(
            self._newer_request("mem", seconds + self.timeout, float(seconds), top, group_by)
        )
        return result

    def log_level(
        self,
        level: str | int | None = None,
        logger: str | None = None,
        duration: float | None = None,
    ) -> dict[str, Any]:
        """Without *level*: the levels of *logger* (default: the root and every logger with
        a level of its own). With *level*: set it, for *duration* seconds when given (the
        agent puts the old level back by itself, client or no client)."""
        result: dict[str, Any] = self._reply(
            self._newer_request("log_level", self.timeout, logger, level, duration)
        )
        return result

    # -- drain and resume (agent side: app_agent/_drain.py) ----------------------------------

    def drain(self, wait_jobs: float = 0.0) -> dict[str, Any]:
        """Mark the app not ready (``ping --ready`` fails), run its on_drain hooks, then wait
        up to *wait_jobs* seconds for its running jobs to end. Idempotent; the report:
        ``{drained: {by, since}, already, hooks: [{name, ok, duration_s, error?}], failed:
        [hook names], running: [{id, task}] (still running), waited_s}``. A failed hook or a
        job still running is in the report, not raised: the app is drained either way."""
        result: dict[str, Any] = self._reply(
            self._newer_request("drain", self.timeout + wait_jobs, float(wait_jobs))
        )
        return result

    def resume(self) -> dict[str, Any]:
        """Run the app's on_resume hooks and, when all pass, mark it ready again:
        ``{resumed, was: {by, since} or None (not drained), hooks, failed}``. With a failed
        hook the app stays drained (``resumed`` False) and ``resume`` may be tried again."""
        result: dict[str, Any] = self._reply(self._newer_request("resume", self.timeout))
        return result

    def _newer_request(self, method: str, timeout: float, *args: Any) -> Any:
        """A request for a method that older agents lack: they refuse its name."""
        try:
            return self._request(method, timeout, *args)
        except AttributeError:
            msg = (
                f"{self.address}: the agent does not offer `{method}`; "
                "it runs an rpcctl older than this client (see `rpcctl info`)"
            )
            raise UsageError(msg) from None

    # -- the remote console (agent side: app_agent/_console.py) ----------------------------

    def console_open(self) -> dict[str, Any]:
        """Open this connection's console session inside the app: ``{session, app, pid, node,
        python, idle_timeout, log_statements}``. AuthenticationFailed (exit 5) when the app
        has not turned its console on."""
        result: dict[str, Any] = self._reply(self._newer_request("console_open", self.timeout))
        return result

    def console_push(self, source: str, wait: float = 0.5) -> dict[str, Any]:
        """Run *source* (complete statements) in the session, inside the app; its output so
        far, all of it when it ends within *wait* seconds: ``{statement, events, cursor,
        dropped, state[, error]}``, *state* ``running`` until it ends."""
        result: dict[str, Any] = self._reply(
            self._request("console_push", self.timeout + wait, source, wait)
        )
        return result

    def console_poll(self, cursor: int, wait: float = 0.5) -> dict[str, Any]:
        """The running statement's output from *cursor* on (as :meth:`console_push`),
        waiting up to *wait* seconds for news."""
        result: dict[str, Any] = self._reply(
            self._request("console_poll", self.timeout + wait, cursor, wait)
        )
        return result

    def console_interrupt(self) -> bool:
        """Raise KeyboardInterrupt in the running statement, where possible; False when
        none runs."""
        result: dict[str, Any] = self._reply(self._request("console_interrupt", self.timeout))
        return bool(result["interrupted"])

    def console_close(self) -> dict[str, Any]:
        """End the session: ``{statements, failed}``."""
        result: dict[str, Any] = self._reply(self._request("console_close", self.timeout))
        return result


def unhealthy_message(checks: list[dict[str, Any]]) -> str:
    """``unhealthy: NAME: message; ...`` for the failed checks."""
    failed = [f"{c['name']}: {c.get('message') or 'failed'}" for c in checks if not c["ok"]]
    return "unhealthy: " + "; ".join(failed)
