"""The agent's settings: every start option, resolved once into an :class:`AgentConfig`.

``app_agent.start(node, tasks, **options)`` takes the options typed by :class:`StartOptions`
(the one definition of them); :func:`load` resolves those and the environment (``RPCCTL_*``,
see :mod:`app_agent.wire.environment`) into a frozen config, checking what goes together
(TCP needs a cookie, tls:// a certificate), and the agent is built from that config, the way
uvicorn separates its ``Config`` from its ``Server``.
"""

from __future__ import annotations

import dataclasses
import os
import ssl
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypedDict

from app_agent import wire
from app_agent._jobs import history as _history
from app_agent.exceptions import ConfigurationError
from app_agent.wire import cookies
from app_agent.wire import environment as env

if TYPE_CHECKING:
    from app_agent._server.access import Access

DEFAULT_IDLE_TIMEOUT = 300.0
"""Seconds an authenticated connection may sit idle before the agent closes it."""
DEFAULT_MAX_ARGUMENT_BYTES = 16 << 20
"""Bytes of JSON arguments one request may carry, by default."""


class StartOptions(TypedDict, total=False):
    """Keyword options of :func:`app_agent.start`.

    - ``app``: the app's name (default ``RPCCTL_APP`` or the program's name).
    - ``allowed_uids``: who may connect on a UNIX socket (default: the agent's euid and root).
    - ``on_stop``: what ``rpcctl stop`` runs (on its own thread) when the app is not under
      ``rpcctl start``; by default the process sends itself SIGTERM.
    - ``cookie``, ``cookie_file``: the cookie (else ``RPCCTL_COOKIE``, ``RPCCTL_COOKIE_FILE``);
      with one, every caller must prove it. TCP requires one.
    - ``tls_cert``, ``tls_key``, ``tls_client_ca``: for ``tls://`` (else ``RPCCTL_TLS_*``);
      a client CA makes client certificates mandatory.
    - ``locks``: where ``@task(lock=...)`` locks live: ``memory`` (default), ``file:DIR`` or a
      ``postgresql://`` URL (else ``RPCCTL_LOCKS``).
    - ``ready``: the app's readiness (see :func:`app_agent.set_ready`).
    - ``idle_timeout``: seconds an authenticated connection may stay silent (else
      ``RPCCTL_IDLE_TIMEOUT``, default 300).
    - ``access``: an access file naming identities, their secrets and grants (else
      ``RPCCTL_ACCESS``); with one, every caller is one of its identities and may do only
      what it is granted (docs/security.md, "Access control"). It replaces the cookie.
    - ``version``: the app's version, reported in ``info`` and the handshake (else
      ``RPCCTL_APP_VERSION``, else the version of the distribution that provides the
      package of the app's first registered task, when one does).
    - ``console``: let ``rpcctl remote`` open a Python console inside the app (else
      ``RPCCTL_CONSOLE=1``; off by default). ``console_log_statements``: the audit log
      records each statement's text, not only its size (else
      ``RPCCTL_CONSOLE_LOG_STATEMENTS=1``).
    - ``max_argument_bytes``: bytes of arguments (as JSON) one request may carry (else
      ``RPCCTL_MAX_ARGUMENT_BYTES``, default 16 MiB); a larger request is refused (exit 2)
      without being held, as is a compressed one that would inflate past it.
    - ``history``: where finished jobs are kept, durably (else ``RPCCTL_HISTORY``):
      ``sqlite:PATH`` (relative to the working directory), ``postgresql://...`` (one table
      shared by every replica) or ``off``; by default a SQLite file beside a ``unix:``
      socket (``SOCKET.history.sqlite3``), none on tcp:// and tls://. ``history_keep``:
      the newest records kept (else ``RPCCTL_HISTORY_KEEP``, default 10,000);
      ``history_days``: the days a record is kept (else ``RPCCTL_HISTORY_DAYS``, default 30).
    """

    app: str | None
    allowed_uids: Iterable[int] | None
    on_stop: Callable[[], None] | None
    cookie: str | bytes | None
    cookie_file: str | os.PathLike[str] | None
    tls_cert: str | None
    tls_key: str | None
    tls_client_ca: str | None
    locks: str | None
    ready: bool | None
    idle_timeout: float | None
    access: str | os.PathLike[str] | None
    version: str | None
    console: bool | None
    console_log_statements: bool | None
    max_argument_bytes: int | None
    history: str | None
    history_keep: int | None
    history_days: float | None


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs, resolved and checked."""

    address: wire.Address
    app: str
    allowed_uids: frozenset[int]
    cookie: bytes | None = None
    tls: ssl.SSLContext | None = None
    locks: str | None = None
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    on_stop: Callable[[], None] | None = None
    ready: bool | None = None
    max_connections: int = 256
    max_handshakes: int = 512
    access: Access | None = None
    version: str | None = None
    warnings: tuple[str, ...] = ()
    """Problems that do not stop the agent (an identity its transport never admits), logged
    at start as ``access.warning``."""
    console: bool = False
    console_log_statements: bool = False
    environment_node: wire.Address | None = None
    """``RPCCTL_NODE`` when ``start(node=...)`` named another address: logged at start as
    ``agent.node_differs`` (under ``rpcctl start``, clients and the runner look there)."""
    max_argument_bytes: int = DEFAULT_MAX_ARGUMENT_BYTES
    history: str = "off"
    """Where finished jobs are kept, resolved: ``off``, ``sqlite:ABSOLUTE_PATH`` or a
    PostgreSQL URL (see :mod:`app_agent._jobs.history`)."""
    history_keep: int = _history.DEFAULT_KEEP
    history_days: float = _history.DEFAULT_DAYS

    @property
    def insecure(self) -> bool:
        """Listening beyond loopback without TLS: what crosses can be read on the way."""
        return not self.address.is_loopback and self.tls is None

    @property
    def shared_socket(self) -> bool:
        """Whether the access file names local users other than the agent's own and root:
        the UNIX socket must then let them connect (the gate checks who they are)."""
        if self.access is None or not self.address.is_unix:
            return False
        return bool(self.access.unix_uids - {os.geteuid(), 0})


def load(node: str | None = None, **options: Any) -> AgentConfig:
    """Resolve *node* and the start *options* (see :class:`StartOptions`) with the
    environment; ConfigurationError naming what is wrong and how to fix it."""
    text = node if node is not None else os.environ.get(env.NODE)
    if not text:
        msg = f"no node address: pass node= or set {env.NODE} (e.g. unix:run/app.sock)"
        raise ConfigurationError(msg)
    try:
        address = wire.parse_node(text)
    except wire.AddressError as exc:
        raise ConfigurationError(str(exc)) from None
    tls = _tls_context(
        address, options.get("tls_cert"), options.get("tls_key"), options.get("tls_client_ca")
    )
    access = _access_file(options)
    warnings: tuple[str, ...] = ()
    if access is None:
        try:
            secret = cookies.resolve_cookie(
                options.get("cookie"), options.get("cookie_file"), cookies.agent_owners()
            )
        except cookies.CookieError as exc:
            raise ConfigurationError(str(exc)) from None
        _check_transport(address, secret is not None, tls)
    else:
        # The identities' cookies are the only secrets. A cookie in the environment is the
        # clients' (the runner exports its cookie_file to the app and its hooks alike).
        if options.get("cookie") is not None or options.get("cookie_file") is not None:
            msg = (
                f"{access.path}: an access file replaces the cookie: give each identity its "
                "own cookie_file there, and drop cookie=/cookie_file="
            )
            raise ConfigurationError(msg)
        secret = None
        _check_transport(address, True, tls)
        warnings = _check_access_transport(address, access, tls)
    uids = options.get("allowed_uids")
    allowed = frozenset(uids) if uids is not None else frozenset({os.geteuid(), 0})
    return AgentConfig(
        address=address,
        app=options.get("app") or _default_app_name(),
        allowed_uids=allowed | (access.unix_uids if access is not None else frozenset()),
        cookie=secret,
        tls=tls,
        locks=options.get("locks") or os.environ.get(env.LOCKS),
        idle_timeout=_idle_timeout(options.get("idle_timeout")),
        on_stop=options.get("on_stop"),
        ready=options.get("ready"),
        access=access,
        version=_version(options.get("version")),
        warnings=warnings,
        console=_flag("console", options.get("console"), env.CONSOLE),
        console_log_statements=_flag(
            "console_log_statements",
            options.get("console_log_statements"),
            env.CONSOLE_LOG_STATEMENTS,
        ),
        environment_node=_other_environment_node(node, address),
        max_argument_bytes=_max_argument_bytes(options.get("max_argument_bytes")),
        history=_history.resolve(
            options.get("history") or os.environ.get(env.HISTORY),
            _history.default_path(address),
        ),
        history_keep=_history_keep(options.get("history_keep")),
        history_days=_history_days(options.get("history_days")),
    )


def _other_environment_node(given: str | None, address: wire.Address) -> wire.Address | None:
    """``RPCCTL_NODE`` when *given* (``start(node=...)``) names another address."""
    text = os.environ.get(env.NODE)
    if given is None or not text:
        return None
    try:
        other = wire.parse_node(text)
    except wire.AddressError:
        return None  # not this agent's to judge: start(node=...) took its place
    return other if other != address else None


def _access_file(options: dict[str, Any]) -> Access | None:
    given = options.get("access")
    path = os.fspath(given) if given is not None else os.environ.get(env.ACCESS)
    if not path:
        return None
    from app_agent._server import access as _access

    try:
        return _access.load(path)
    except _access.AccessError as exc:
        raise ConfigurationError(str(exc)) from None


def _check_access_transport(
    address: wire.Address, access: Access, tls: ssl.SSLContext | None
) -> tuple[str, ...]:
    """Identities this address can never admit: warnings, or an error when none is left."""
    mutual = tls is not None and tls.verify_mode == ssl.CERT_REQUIRED
    usable = {"cookie": True, "unix": address.is_unix, "tls": mutual}
    why = {
        "unix": f"{address} is not a UNIX socket",
        "tls": f"{address} does not require client certificates (no tls_client_ca)",
    }
    warnings = []
    for name, identity in access.identities.items():
        kind = "cookie" if identity.cookie else "unix" if identity.uid is not None else "tls"
        if not usable[kind]:
            credential = "unix_user" if kind == "unix" else "tls_subject"
            warnings.append(f"{access.path}: [identity.{name}] {credential}: {why[kind]}")
    if len(warnings) == len(access.identities):
        msg = f"no identity can connect: {'; '.join(warnings)}"
        raise ConfigurationError(msg)
    return tuple(warnings)


def _version(given: str | None) -> str | None:
    if given is not None and (not isinstance(given, str) or not given.strip()):
        msg = f"version must be a non-empty string, not {given!r}"
        raise ConfigurationError(msg)
    return given or os.environ.get(env.APP_VERSION) or None


def app_modules(task_modules: Iterable[str]) -> list[str]:
    """The top-level packages of the app, from the modules of its registered tasks, in
    order: the agent's own (``app_agent``) left out, ``__main__`` as the package run with
    ``python -m`` (a script has none)."""
    found: dict[str, None] = {}
    for module in task_modules:
        if module == "__main__":
            spec = getattr(sys.modules.get("__main__"), "__spec__", None)
            module = spec.name if spec is not None else ""
        top = module.partition(".")[0]
        if top and top != "app_agent":
            found.setdefault(top)
    return list(found)


def task_module(func: Callable[..., Any]) -> str:
    """The module a registered task counts as when looking for the app's version: where it
    was defined when that is the agent's own code (its Django tasks are named after Django,
    ``django.migrate``, and must not report Django's version as the app's), else its
    ``__module__``."""
    defined = str(getattr(func, "__globals__", {}).get("__name__", ""))
    if defined.partition(".")[0] == "app_agent":
        return defined
    return func.__module__


def distribution_version(packages: Iterable[str]) -> str | None:
    """The version of the installed distribution that provides the first of *packages*
    that one provides; None when none does."""
    from importlib import metadata

    providers: dict[str, list[str]] | None = None
    for package in packages:
        try:
            return metadata.version(package)  # the distribution is named like the package
        except metadata.PackageNotFoundError:
            pass
        if providers is None:
            providers = dict(metadata.packages_distributions())
        for distribution in providers.get(package, []):
            try:
                return metadata.version(distribution)
            except metadata.PackageNotFoundError:
                continue
    return None


def _check_transport(address: wire.Address, proven: bool, tls: ssl.SSLContext | None) -> None:
    """*proven*: callers must prove a secret (a cookie, or an access file's identities)."""
    if address.is_unix:
        if tls is not None:
            msg = f"{address}: TLS applies to tls:// addresses, not UNIX sockets"
            raise ConfigurationError(msg)
        return
    if not proven:
        msg = (
            f"{address}: the agent listens on TCP only with a cookie; set "
            f"{env.COOKIE} or {env.COOKIE_FILE} (or pass cookie_file=)"
        )
        raise ConfigurationError(msg)
    if address.scheme == "tls" and tls is None:
        msg = (
            f"{address}: a tls:// agent needs a certificate and key "
            f"(tls_cert=/tls_key=, or {env.TLS_CERT} and {env.TLS_KEY})"
        )
        raise ConfigurationError(msg)
    if address.scheme == "tcp" and tls is not None:
        msg = f"{address}: a certificate was given for a tcp:// address; use tls://"
        raise ConfigurationError(msg)


def _tls_context(
    address: wire.Address, cert: str | None, key: str | None, client_ca: str | None
) -> ssl.SSLContext | None:
    cert = cert or os.environ.get(env.TLS_CERT)
    key = key or os.environ.get(env.TLS_KEY)
    client_ca = client_ca or os.environ.get(env.TLS_CLIENT_CA)
    if address.scheme != "tls" and not (cert or key):
        return None
    if not cert:
        return None  # reported by _check_transport with the whole picture
    try:
        return server_tls_context(cert, key, client_ca)
    except (OSError, ssl.SSLError) as exc:
        msg = f"{address}: cannot load the TLS certificate/key ({exc})"
        raise ConfigurationError(msg) from None


def server_tls_context(cert: str, key: str | None, client_ca: str | None) -> ssl.SSLContext:
    """TLS for the agent: its certificate, and client certificates required with *client_ca*."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    if client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca)
    return context


def _idle_timeout(given: float | None) -> float:
    value: float = _setting(given, env.IDLE_TIMEOUT, float, DEFAULT_IDLE_TIMEOUT, "seconds")
    if not value > 0:
        msg = f"idle_timeout must be a positive number of seconds, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _setting(given: Any, variable: str, kind: Callable[[str], Any], default: Any, unit: str) -> Any:
    """A numeric start option: as given, else from *variable*, else *default*."""
    text = os.environ.get(variable)
    if given is None and text:
        try:
            return kind(text)
        except ValueError:
            msg = f"{variable}={text!r}: expected a number of {unit}"
            raise ConfigurationError(msg) from None
    return default if given is None else given


def arguments_too_big(size: int | None, limit: int) -> str:
    """The refusal of a request of *size* bytes (None: more than *limit*, once inflated)."""
    what = f"{size:,} bytes" if size is not None else f"more than {limit:,} bytes"
    return (
        f"a request of {what}: this agent takes arguments of at most {limit:,} bytes as JSON "
        f"(max_argument_bytes in the app, or {env.MAX_ARGUMENT_BYTES})"
    )


def _max_argument_bytes(given: int | None) -> int:
    value: int = _setting(given, env.MAX_ARGUMENT_BYTES, int, DEFAULT_MAX_ARGUMENT_BYTES, "bytes")
    if type(value) is not int or value < 1024:
        msg = f"max_argument_bytes must be a whole number of bytes, at least 1024, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _history_keep(given: int | None) -> int:
    value: int = _setting(given, env.HISTORY_KEEP, int, _history.DEFAULT_KEEP, "records")
    if type(value) is not int or value < 1:
        msg = f"history_keep must be a whole number of records, at least 1, not {value!r}"
        raise ConfigurationError(msg)
    return value


def _history_days(given: float | None) -> float:
    value: float = _setting(given, env.HISTORY_DAYS, float, _history.DEFAULT_DAYS, "days")
    if type(value) not in (int, float) or not 0 < value < float("inf"):
        msg = f"history_days must be a positive number of days, not {value!r}"
        raise ConfigurationError(msg)
    return float(value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def _flag(option: str, given: bool | None, variable: str) -> bool:
    """A start option that is off by default: as given, else from *variable*."""
    if given is not None:
        if type(given) is not bool:
            msg = f"{option} must be True or False, not {given!r}"
            raise ConfigurationError(msg)
        return given
    text = os.environ.get(variable, "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    msg = f"{variable}={os.environ[variable]!r}: expected 1 (on) or 0 (off)"
    raise ConfigurationError(msg)


def _default_app_name() -> str:
    program = sys.argv[0] or "python"
    if os.path.basename(program) == "__main__.py":  # python -m pkg: the package's name
        program = os.path.dirname(program)
    return os.environ.get(env.APP) or os.path.basename(program)
