"""``rpcctl start``: the release runner, a foreground supervisor with boot hooks.

Sequence: take the release's lock → pre_start hooks → start the app → wait until its agent
answers ping and proves to be that app → post_start hooks → supervise. SIGTERM/SIGINT:
pre_stop hooks (the app is still up) → SIGTERM to the app → SIGKILL after the grace period
→ post_stop hooks → exit 0. SIGHUP: the same stop, then the whole start again (``rpcctl
restart``). The app dying by itself: post_stop hooks, then exit with the app's status.
Whatever the path, the runner's last log line is ``runner.stopped`` with its exit status and
the reason.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import threading
import time
from typing import Any, Final, NamedTuple

from app_agent.wire import NODE_ENV, RUNNER_ENV, ErrorKind, environment, pid_alive
from app_agent.wire.backoff import Backoff
from app_agent.wire.cookies import COOKIE_ENV, COOKIE_FILE_ENV
from app_agent.wire.environment import IDENTITY as IDENTITY_ENV
from rpcctl import _transport
from rpcctl._transport import Security
from rpcctl.exceptions import CallTimeout, RpcctlError, Unreachable, UsageError
from rpcctl.release import hooks, listening, lock
from rpcctl.release.app import App
from rpcctl.release.config import Config, rpcctl_executable

# Exit statuses of `rpcctl start` besides 0 (clean stop) and the app's own status, from the
# one exit-code table (app_agent/wire/errors.py).
HOOK_FAILED: Final = ErrorKind.TASK_FAILED.exit_code  # a hook failed, as a task raises
ALREADY_RUNNING: Final = ErrorKind.USAGE.exit_code  # another runner holds the lock, or app
NEVER_READY: Final = ErrorKind.UNREACHABLE.exit_code  # the agent never answered
KILLED: Final = ErrorKind.TIMEOUT.exit_code  # the app outlived its grace period

_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class Ending(NamedTuple):
    """How a run ends: the runner's exit status and why, for its last log line."""

    status: int
    reason: str


class Runner:
    """Runs one release in the foreground; :meth:`run` returns the exit status."""

    def __init__(self, config: Config, log: Any) -> None:
        self.config = config
        self.log = log.bind(app=config.name)
        self.app = App(config, self.log)
        self._signals: list[int] = []
        self._wakeup_r = -1
        self._answering_pid: int | None = None
        self._refusal = ""
        # The runner's own pings prove the same cookie (and identity) as the app's callers.
        self.security = Security.resolve(cookie_file=config.cookie_file, identity=config.identity)

    # -- the whole life --------------------------------------------------------------------

    def run(self) -> int:
        if threading.current_thread() is not threading.main_thread():
            msg = "rpcctl start must run on the main thread (it handles signals)"
            raise UsageError(msg)
        self._refuse_recursion()
        with lock.held(self.config):
            self._refuse_if_running()
            with self._signal_handling():
                end = self._run()
        log = self.log.info if end.status == 0 else self.log.error
        log("runner.stopped", status=end.status, reason=end.reason)
        return end.status

    def _run(self) -> Ending:
        while True:
            end = self._boot()
            if end is not None:
                return end
            end = self._supervise()
            if end is not None:
                return end
            self.log.info("runner.restarting")

    def _boot(self) -> Ending | None:
        """Start everything; None when the app is up, else how the run ends."""
        self.log.info("runner.starting", node=self.config.node, command=self.app.command)
        failed = self._hooks("pre_start")
        if failed is not None:
            return Ending(HOOK_FAILED, f"pre_start {failed.describe()}; the app was not started")
        if self._stop_requested():
            return Ending(0, "stop requested before the app started")
        self.app.spawn(self._environment())
        ready = self._wait_ready()
        if ready == "exited":
            status = self.app.status()
            reason = f"the app exited with status {status} before its agent answered ping"
            self.log.error("runner.app_exited_before_ready", status=status, reason=reason)
            self.app.clear_socket()
            self._hooks("post_stop")
            return Ending(status or HOOK_FAILED, reason)
        if ready in ("timeout", "refused"):
            reason = (
                f"the app's agent did not answer ping at {self.config.node} within "
                f"{self.config.ready_timeout:g}s{self._where_it_listens()}"
                if ready == "timeout"
                else f"the agent at {self.config.node} refused the runner: {self._refusal}"
            )
            self.log.error("runner.never_ready", reason=f"{reason}; stopping the app")
            clean = self.app.terminate()
            self._hooks("post_stop")
            return Ending(NEVER_READY, f"{reason}; the app was stopped{self.app.killed(clean)}")
        if ready == "foreign":
            # Every hook from here on would act on that other app: run none.
            reason = (
                f"another app answers at {self.config.node}: its agent is pid "
                f"{self._answering_pid}, not this runner's app (pid {self.app.pid}) nor a "
                "process it started; this app was stopped and no more hooks ran"
            )
            self.log.error(
                "runner.foreign_agent", agent_pid=self._answering_pid, app_pid=self.app.pid
            )
            self.app.terminate()
            return Ending(ALREADY_RUNNING, reason)
        if ready == "stopped":
            clean = self._stop_app(run_pre_stop=False)
            return Ending(
                0 if clean else KILLED,
                f"stop requested before the app was ready{self.app.killed(clean)}",
            )
        self.log.info("runner.ready", pid=self.app.pid)
        failed = self._hooks("post_start")
        if failed is not None:
            why = f"post_start {failed.describe()}"
            self.log.error("runner.stopping", reason=why)
            clean = self._stop_app()
            return Ending(HOOK_FAILED, f"{why}; the app was stopped{self.app.killed(clean)}")
        return None

    def _supervise(self) -> Ending | None:
        """Wait for a signal or the app's end; None to start again (SIGHUP)."""
        self.log.info("runner.supervising", pid=self.app.pid)
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup_r, selectors.EVENT_READ)
            while True:
                if self.app.exited():
                    status = self.app.status()
                    self.log.error("runner.app_exited", status=status)
                    self.app.clear_socket()
                    self._hooks("post_stop")
                    return Ending(status, f"the app exited by itself with status {status}")
                pending = self._take_signals()
                if signal.SIGHUP in pending:
                    self.log.info("runner.restart_requested")
                    if self._stop_app():
                        return None
                    why = "restart requested; the app was not started again"
                    return Ending(KILLED, f"{why}{self.app.killed(False)}")
                stops = [s for s in pending if s in _STOP_SIGNALS]
                if stops:
                    self.log.info("runner.stop_requested")
                    clean = self._stop_app()
                    name = signal.Signals(stops[0]).name
                    return Ending(
                        0 if clean else KILLED, f"stopped on {name}{self.app.killed(clean)}"
                    )
                selector.select()  # woken by SIGCHLD, SIGTERM, SIGINT or SIGHUP
                self._drain_wakeup()

    def _stop_app(self, run_pre_stop: bool = True) -> bool:
        """pre_stop hooks, stop the app, post_stop hooks; True when SIGTERM was enough."""
        if run_pre_stop:
            self._hooks("pre_stop")
        clean = self.app.terminate()
        self._hooks("post_stop")
        return clean

    # -- the app's readiness -----------------------------------------------------------------

    def _wait_ready(self) -> str:
        """'ready', 'exited', 'timeout', 'refused', 'foreign' or 'stopped'."""
        backoff = Backoff(0.005, 0.1, time.monotonic() + self.config.ready_timeout)
        while True:
            if self.app.exited():
                return "exited"
            if self._stop_requested():
                return "stopped"
            remaining = backoff.remaining()
            if remaining <= 0:
                return "timeout"
            try:
                _transport.ping(self.config.address, min(remaining, 2.0), self.security)
                pid = self._agent_pid(min(max(remaining, 1.0), 10.0))
            except (Unreachable, CallTimeout):
                backoff.sleep()
                continue
            except RpcctlError as exc:
                # It answers but refuses us (authentication, version): waiting will not help.
                self.log.error("runner.ping_refused", error=exc.message)
                self._refusal = exc.message
                return "refused"
            if self.app.is_ours(pid):
                return "ready"
            self._answering_pid = pid
            return "foreign"

    def _where_it_listens(self) -> str:
        """What the never-ready verdict adds: where the app's agent listens instead, when
        its process tree tells (its socket and the pid recorded beside it), else that under
        the runner start() needs no node."""
        node = self.config.node
        pid = self.app.pid
        found = listening.agent_socket(pid) if pid is not None else None
        if found == self.config.address.path:
            return ": its agent listens there but did not answer in time"
        if found is not None:
            return (
                f": it listens at unix:{found} instead (a node given to "
                f"app_agent.start() overrides {NODE_ENV}={node}; under `rpcctl start`, call "
                "start() without node=)"
            )
        return (
            " (does the app call app_agent.start()? Under `rpcctl start` it needs no node: "
            f"the runner sets {NODE_ENV}={node})"
        )

    def _agent_pid(self, timeout: float) -> int:
        """The pid the agent answering at the node reports (``info``)."""
        from rpcctl.client import Client

        with Client(self.config.address, timeout=timeout, security=self.security) as client:
            return int(client.info()["pid"])

    # -- hooks -------------------------------------------------------------------------------

    def _hooks(self, event: str) -> hooks.HookResult | None:
        """Run *event*'s scripts; the failure that stops the sequence, else None."""
        directory = self.config.hook_dirs[event]
        found = hooks.scripts(directory, self.log)
        if not found:
            return None
        env = self._environment(hook=event)
        policy = self.config.on_failure[event]
        started = time.monotonic()
        for path, argv in found:
            result = hooks.run_one(
                path, argv, env, self.config.root, self.config.hook_timeout, self.log
            )
            if not result.ok and policy == "stop":
                return result
            if not result.ok:
                self.log.warning("hook.failure_ignored", hook=result.name, policy=policy)
        self.log.info(
            "hooks.finished",
            hooks=event,
            count=len(found),
            duration_s=round(time.monotonic() - started, 3),
        )
        return None

    def _environment(self, hook: str | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(self.config.env)
        env.update(
            {
                NODE_ENV: self.config.node,
                environment.APP: self.config.name,
                environment.ROOT: str(self.config.root),
                environment.RPCCTL: self._rpcctl_command(),
                RUNNER_ENV: str(os.getpid()),
            }
        )
        if self.config.cookie_file is not None:
            # The release's own cookie: one exported for another app (RPCCTL_COOKIE beats a
            # file in the agent, and in a plain rpcctl) must not reach its app or hooks.
            env.pop(COOKIE_ENV, None)
            env[COOKIE_FILE_ENV] = str(self.config.cookie_file)
        if self.config.identity is not None:
            env[IDENTITY_ENV] = self.config.identity
        if self.config.locks is not None:  # the release's default; RPCCTL_LOCKS overrides
            env.setdefault(environment.LOCKS, self.config.locks)
        if self.app.running():
            env[environment.APP_PID] = str(self.app.pid)
        else:
            env.pop(environment.APP_PID, None)
        if hook is not None:
            env[environment.HOOK] = hook
        else:
            env.pop(environment.HOOK, None)
        return env

    def _rpcctl_command(self) -> str:
        """One executable that reaches this app: its bin/NAME launcher, else rpcctl itself
        (which finds the app through RPCCTL_NODE)."""
        launcher = self.config.root / "bin" / self.config.name
        if launcher.is_file() and os.access(launcher, os.X_OK):
            return str(launcher)
        return rpcctl_executable()

    # -- guards ------------------------------------------------------------------------------

    def _refuse_recursion(self) -> None:
        runner = os.environ.get(RUNNER_ENV)
        if runner and runner.isdigit() and pid_alive(int(runner)):
            msg = (
                f"refusing to start {self.config.name} from inside a running release "
                f"(runner pid {runner}): a hook or the app itself ran `start` again"
            )
            raise UsageError(msg)

    def _refuse_if_running(self) -> None:
        try:
            _transport.ping(self.config.address, 2.0, self.security)
        except (Unreachable, CallTimeout):
            return
        except RpcctlError:
            pass  # something answers there and refuses us: still, it is running
        msg = f"{self.config.name} is already running: an agent answers at {self.config.node}"
        raise UsageError(msg)

    # -- signals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _signal_handling(self) -> Any:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        os.set_blocking(write_fd, False)
        self._wakeup_r = read_fd
        handled = (*_STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)
        previous = {sig: signal.getsignal(sig) for sig in handled}
        old_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
        for sig in handled:
            signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            signal.set_wakeup_fd(old_fd)
            os.close(read_fd)
            os.close(write_fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if signum != signal.SIGCHLD:
            self._signals.append(signum)

    def _take_signals(self) -> list[int]:
        taken, self._signals = self._signals, []
        return taken

    def _stop_requested(self) -> bool:
        return any(s in _STOP_SIGNALS for s in self._signals)

    def _drain_wakeup(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wakeup_r, 512):
                pass
