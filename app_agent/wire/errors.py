"""Error kinds: why a request failed, and the one exit code each maps to."""

from __future__ import annotations

import enum

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final


class ErrorKind(enum.StrEnum):
    """Why a request failed; each kind maps to one CLI exit code."""

    TASK_FAILED = "task_failed"
    USAGE = "usage"
    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    NO_SUCH_TASK = "no_such_task"
    BUSY = "busy"
    UNHEALTHY = "unhealthy"

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]


_EXIT_CODES: Final = {
    ErrorKind.TASK_FAILED: 1,
    ErrorKind.USAGE: 2,
    ErrorKind.UNREACHABLE: 3,
    ErrorKind.TIMEOUT: 4,
    ErrorKind.AUTH: 5,
    ErrorKind.NO_SUCH_TASK: 6,
    ErrorKind.BUSY: 7,
    ErrorKind.UNHEALTHY: 8,
}


class Reason(enum.StrEnum):
    """Why, more precisely than the kind: the code an error carries with its data (its
    other fields), from which the operator's side makes its words and hints in one place
    (``rpcctl/_explain.py``). Behaviour never depends on an error's message text; add a
    reason here instead."""

    # unreachable (3): nothing answers, or not as a serving app
    NO_SOCKET = "no_socket"  # the UNIX socket does not exist (data: path)
    STALE_SOCKET = "stale_socket"  # it exists, nothing listens (data: path, pid when known)
    APP_GONE = "app_gone"  # a stale socket whose recorded pid is gone (data: pid)
    CONNECTION_REFUSED = "connection_refused"  # tcp:// or tls://: nothing listens
    CANNOT_RESOLVE = "cannot_resolve"  # the host name does not resolve
    CANNOT_CONNECT = "cannot_connect"  # any other connect error
    CONNECTION_LOST = "connection_lost"  # the agent went away mid-conversation
    NOT_READY = "not_ready"  # ping --ready: the app says it cannot serve yet
    TOO_MANY_CONNECTIONS = "too_many_connections"
    NOT_AN_AGENT = "not_an_agent"  # an unexpected answer to the hello
    NO_MATCH = "no_match"  # --where kept no node (data: filter, seen)
    HISTORY_DOWN = "history_down"  # the durable history's store cannot be read
    # timeout (4)
    NO_ANSWER = "no_answer"  # the deadline passed (data: seconds, and the diagnosis below)
    APP_STOPPED = "app_stopped"  # the listener's process is stopped (SIGSTOP, a debugger)
    APP_ZOMBIE = "app_zombie"  # it exited and nobody reaped it
    APP_SILENT = "app_silent"  # it runs, but none of its Python threads answers (GIL held)
    NO_DESCRIPTORS = "no_descriptors"  # it ran out of file descriptors
    ACCEPTED_NO_ANSWER = "accepted_no_answer"  # another host: accepted, then silence
    STILL_RUNNING = "still_running"  # a call's deadline passed; its job goes on (data: job)
    TASK_TIMEOUT = "task_timeout"  # the task's own timeout passed, cancelled (data: job)
    # auth (5)
    NO_COOKIE = "no_cookie"  # the agent demands a cookie we lack
    WRONG_COOKIE = "wrong_cookie"  # or an unknown identity: they look alike by design
    AGENT_UNPROVEN = "agent_unproven"  # the agent could not prove the cookie
    TAMPERED_REQUEST = "tampered_request"  # the agent found our request altered
    TAMPERED_REPLY = "tampered_reply"  # the agent's reply failed its integrity check
    UNTRUSTED_PEER = "untrusted_peer"  # a UNIX socket's listener of another uid
    UNSAFE_DIRECTORY = "unsafe_directory"  # a socket directory others could have made
    PEER_UID = "peer_uid"  # the agent does not admit our uid
    TLS = "tls"  # a TLS failure (untrusted certificate, refused handshake)
    IDENTITY = "identity"  # no identity, an ambiguous certificate, one without an access file
    GRANT_MISSING = "grant_missing"  # the identity lacks a grant (data: grant, action)
    TASK_NOT_ALLOWED = "task_not_allowed"  # the identity may not run that task (data: task)
    CONSOLE_OFF = "console_off"  # the app has not turned its console on
    # usage (2)
    BAD_ARGUMENTS = "bad_arguments"  # a method's or a task's arguments do not fit
    ARGUMENTS_TOO_BIG = "arguments_too_big"  # over max_argument_bytes (data: size, limit)
    NO_SUCH_JOB = "no_such_job"  # (data: job)
    VERSION_MISMATCH = "version_mismatch"  # client and agent speak other protocol versions
    BAD_CONFIG = "bad_config"  # a configuration the agent or the client cannot use
    NO_METHOD = "no_method"  # an older agent lacks the method (data: method)
    CONSOLE_SESSION = "console_session"  # no console session open here, or one already is
    NO_RUNNER = "no_runner"  # restart asked of an app not under `rpcctl start`
    NO_PROFILE = "no_profile"  # cancel of a profile that is not running (data: id)
    BAD_LEVEL = "bad_level"  # an unknown log level or logger name
    HISTORY_OFF = "history_off"  # the app keeps no durable history
    # no such task (6)
    NO_SUCH_TASK = "no_such_task"  # (data: task, suggestion when one is close)
    NO_TASKS = "no_tasks"  # the app registers none at all
    NOT_IMPORTED = "not_imported"  # eval: no task module it imported registers it (data: task)
    # busy (7)
    LOCK_HELD = "lock_held"  # the task's lock is held by another job (data: holder)
    NO_THREAD = "no_thread"  # the app cannot start a thread (data: threads)
    PROFILE_RUNNING = "profile_running"  # another profile runs (data: id)
    MEM_RUNNING = "mem_running"  # another mem runs
    DRAIN_RUNNING = "drain_running"  # a drain's or resume's hooks are running
    # task failed (1)
    RAISED = "raised"  # the task raised (data: type, traceback)
    CANCELLED = "cancelled"  # the job was cancelled
    COULD_NOT_START = "could_not_start"  # the job could not start (data: type)
    TRACING_STOPPED = "tracing_stopped"  # mem: the app stopped tracemalloc meanwhile
    # unhealthy (8)
    CHECK_FAILED = "check_failed"  # a health check failed (data: checks)


INTERRUPTED: Final = 130
"""Exit status after Ctrl-C (128 + SIGINT, as shells report it): the job goes on."""
