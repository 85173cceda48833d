"""``rpcctl start``: the release runner, a foreground supervisor with boot hooks.

Sequence: pre_start hooks → start the app → wait until its agent answers ping → post_start
hooks → supervise. SIGTERM/SIGINT: pre_stop hooks (the app is still up) → SIGTERM to the app
→ SIGKILL after the grace period → post_stop hooks → exit 0. SIGHUP: the same stop, then the
whole start again (``rpcctl restart``). The app dying by itself: post_stop hooks, then exit
with the app's status.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import subprocess
import threading
import time
from typing import Any, Final

from app_agent.wire import NODE_ENV, RUNNER_ENV, pid_alive
from app_agent.wire.cookies import COOKIE_FILE_ENV
from rpcctl import _transport, hooks
from rpcctl._transport import Security
from rpcctl.config import Config, rpcctl_executable
from rpcctl.exceptions import CallTimeout, RpcctlError, Unreachable, UsageError

# Exit statuses of `rpcctl start` besides 0 (clean stop) and the app's own status.
HOOK_FAILED: Final = 1
NEVER_READY: Final = 3
KILLED: Final = 4

_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class Runner:
    """Runs one release in the foreground; :meth:`run` returns the exit status."""

    def __init__(self, config: Config, log: Any) -> None:
        self.config = config
        self.log = log.bind(app=config.name)
        self.proc: subprocess.Popen[bytes] | None = None
        self._signals: list[int] = []
        self._wakeup_r = -1
        # The runner's own pings prove the same cookie as the app's callers.
        self.security = Security.resolve(cookie_file=config.cookie_file)

    # -- the whole life --------------------------------------------------------------------

    def run(self) -> int:
        if threading.current_thread() is not threading.main_thread():
            msg = "rpcctl start must run on the main thread (it handles signals)"
            raise UsageError(msg)
        self._refuse_recursion()
        self._refuse_if_running()
        with self._signal_handling():
            while True:
                status = self._boot()
                if status is not None:
                    return status
                outcome = self._supervise()
                if outcome != "restart":
                    return int(outcome)
                self.log.info("runner.restarting")

    def _boot(self) -> int | None:
        """Start everything; None when the app is up, else the exit status to end with."""
        self.log.info("runner.starting", node=self.config.node, command=self.config.command)
        failed = self._hooks("pre_start")
        if failed is not None:
            self.log.error("runner.not_started", reason=f"pre_start {failed.describe()}")
            return HOOK_FAILED
        if self._stop_requested():
            self.log.info("runner.stopped", reason="stop requested before the app started")
            return 0
        self._spawn()
        ready = self._wait_ready()
        if ready == "exited":
            status = self._app_status()
            self.log.error(
                "runner.app_exited_before_ready",
                status=status,
                reason=f"the app exited with status {status} before its agent answered ping",
            )
            self._hooks("post_stop")
            return status or HOOK_FAILED
        if ready == "timeout":
            self.log.error(
                "runner.never_ready",
                reason=(
                    f"the app's agent did not answer ping at {self.config.node} within "
                    f"{self.config.ready_timeout:g}s; stopping the app"
                ),
            )
            self._terminate()
            self._hooks("post_stop")
            return NEVER_READY
        if ready == "stopped":
            return self._shutdown(run_pre_stop=False)
        self.log.info("runner.ready", pid=self._pid())
        failed = self._hooks("post_start")
        if failed is not None:
            self.log.error("runner.stopping", reason=f"post_start {failed.describe()}")
            self._shutdown()
            return HOOK_FAILED
        return None

    def _supervise(self) -> int | str:
        self.log.info("runner.supervising", pid=self._pid())
        with selectors.DefaultSelector() as selector:
            selector.register(self._wakeup_r, selectors.EVENT_READ)
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    status = self._app_status()
                    self.log.error("runner.app_exited", status=status)
                    self._hooks("post_stop")
                    return status
                pending = self._take_signals()
                if signal.SIGHUP in pending:
                    self.log.info("runner.restart_requested")
                    if self._shutdown() == KILLED:
                        return KILLED
                    return "restart"
                if any(s in _STOP_SIGNALS for s in pending):
                    self.log.info("runner.stop_requested")
                    return self._shutdown()
                selector.select()  # woken by SIGCHLD, SIGTERM, SIGINT or SIGHUP
                self._drain_wakeup()

    def _shutdown(self, run_pre_stop: bool = True) -> int:
        if run_pre_stop:
            self._hooks("pre_stop")
        status = 0 if self._terminate() else KILLED
        self._hooks("post_stop")
        self.log.info("runner.stopped", status=status)
        return status

    # -- the app process -------------------------------------------------------------------

    def _spawn(self) -> None:
        env = self._environment()
        try:
            # Its own process group: a Ctrl-C at the terminal reaches the runner only, which
            # then stops the app in order (pre_stop hooks first).
            self.proc = subprocess.Popen(
                self.config.command, cwd=self.config.cwd, env=env, process_group=0
            )
        except OSError as exc:
            msg = f"cannot run the app's command {self.config.command}: {exc}"
            raise UsageError(msg) from None
        self.log.info("runner.app_started", pid=self.proc.pid)

    def _wait_ready(self) -> str:
        """'ready', 'exited', 'timeout' or 'stopped'."""
        deadline = time.monotonic() + self.config.ready_timeout
        delay = 0.005
        while True:
            if self.proc is not None and self.proc.poll() is not None:
                return "exited"
            if self._stop_requested():
                return "stopped"
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout"
            try:
                _transport.ping(self.config.address, min(remaining, 2.0), self.security)
                return "ready"
            except (Unreachable, CallTimeout):
                time.sleep(min(delay, max(remaining, 0)))
                delay = min(delay * 1.5, 0.1)
            except RpcctlError as exc:
                # It answers but refuses us (authentication, version): waiting will not help.
                self.log.error("runner.ping_refused", error=exc.message)
                return "timeout"

    def _terminate(self) -> bool:
        """SIGTERM, then SIGKILL after the grace period; True when it ended on SIGTERM."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return True
        self.log.info("runner.terminating", pid=proc.pid, grace_s=self.config.stop_timeout)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=self.config.stop_timeout)
            self.log.info("runner.app_exited", status=self._app_status())
            return True
        except subprocess.TimeoutExpired:
            self.log.warning("runner.killing", pid=proc.pid, reason="still running after grace")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return False

    def _app_status(self) -> int:
        code = self.proc.returncode if self.proc is not None else 0
        if code is None:
            return 0
        return 128 - code if code < 0 else code

    def _pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

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
                "RPCCTL_APP": self.config.name,
                "RPCCTL_ROOT": str(self.config.root),
                "RPCCTL": self._rpcctl_command(),
                RUNNER_ENV: str(os.getpid()),
            }
        )
        if self.config.cookie_file is not None:
            env[COOKIE_FILE_ENV] = str(self.config.cookie_file)
        if self.proc is not None and self.proc.poll() is None:
            env["RPCCTL_APP_PID"] = str(self.proc.pid)
        else:
            env.pop("RPCCTL_APP_PID", None)
        if hook is not None:
            env["RPCCTL_HOOK"] = hook
        else:
            env.pop("RPCCTL_HOOK", None)
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
