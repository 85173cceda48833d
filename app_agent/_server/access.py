"""Identities and grants: who may do what on an agent that has an access file.

An access file (``app_agent.start(access=PATH)`` or ``RPCCTL_ACCESS``) names identities, each
with one credential (its own cookie file, a TLS client-certificate subject, or a local UNIX
user) and what it may do::

    [identity.oncall]
    cookie_file = "oncall.cookie"          # relative to this file
    allow = ["read", "myapp.tasks.flush_cache", "myapp.tasks.reindex_*"]

The gate (:mod:`app_agent._server.gate`) decides which identity a connection is; the service
(:mod:`app_agent._service`) asks :meth:`Identity.may` and :meth:`Identity.may_run` before it
does anything. Without an access file every admitted caller is :data:`UNRESTRICTED`, as
before identities existed. See docs/security.md, "Access control".
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
from collections.abc import Iterable
from typing import Any, Final

from app_agent.wire import cookies, is_identity_name

READ: Final = "read"
"""ping, info, tasks, jobs, a job's events (logs, wait), stack, stats, health, profile, mem,
and showing log levels."""
STOP: Final = "stop"
"""Stopping or restarting the app (``rpcctl stop``/``restart``)."""
LOG_LEVEL: Final = "log_level"
"""Changing a logger's level (showing levels is ``read``)."""
CONSOLE: Final = "console"
"""The remote console: never implied by ``*``, only granted by name."""
DRAIN: Final = "drain"
"""Draining the app and resuming it (``rpcctl drain``/``resume``); ``*`` implies it."""
EVERYTHING: Final = "*"
"""Every grant but ``console``, and every task."""

GRANTS: Final = (READ, STOP, LOG_LEVEL, CONSOLE, DRAIN)
_CREDENTIALS: Final = ("cookie_file", "tls_subject", "unix_user")
_IDENTITY_KEYS: Final = {
    "allow": 'a list of grants (read, stop, log_level, console, drain, "*") and task patterns '
    '(globs on the full task name, such as "myapp.tasks.reindex_*")',
    "cookie_file": "the owner-only file holding this identity's cookie, relative to the "
    "access file",
    "tls_subject": "attributes the verified client certificate's subject must have, such as "
    '"CN=ci" or "CN=ci,O=Example"',
    "unix_user": "a local user name (or uid) connecting on the UNIX socket",
}
_SUBJECT_KEYS: Final = {
    "CN": "commonName",
    "O": "organizationName",
    "OU": "organizationalUnitName",
    "C": "countryName",
    "ST": "stateOrProvinceName",
    "L": "localityName",
    "DC": "domainComponent",
    "UID": "userId",
    "emailAddress": "emailAddress",
}


MAX_ACCESS_BYTES: Final = 1 << 20
"""An access file larger than this is refused."""


class AccessError(ValueError):
    """An access file that cannot be used; the message names the file and the key."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who a connection is, and what it may do.

    ``name`` is None only for :data:`UNRESTRICTED` (an agent without an access file).
    """

    name: str | None
    allow: tuple[str, ...] = ()
    cookie: bytes | None = dataclasses.field(default=None, repr=False)
    tls_subject: tuple[tuple[str, str], ...] = ()
    uid: int | None = None

    def may(self, grant: str) -> bool:
        """Whether this identity holds *grant* (one of :data:`GRANTS`)."""
        if self.name is None:
            return True
        if grant == CONSOLE:
            return CONSOLE in self.allow  # never implied by "*"
        return EVERYTHING in self.allow or grant in self.allow

    def may_run(self, task: str) -> bool:
        """Whether this identity may run the task whose full name is *task*."""
        if self.name is None or EVERYTHING in self.allow:
            return True
        return any(fnmatch.fnmatchcase(task, pattern) for pattern in self.task_patterns)

    @property
    def sends_arguments(self) -> bool:
        """Whether anything this identity may do takes arguments of any size (a task, the
        console): without, its requests are a few small values, and larger ones are
        refused unread."""
        return (
            self.name is None
            or EVERYTHING in self.allow
            or bool(self.task_patterns)
            or (CONSOLE in self.allow)
        )

    @property
    def task_patterns(self) -> tuple[str, ...]:
        return tuple(p for p in self.allow if p not in GRANTS and p != EVERYTHING)

    def matches_certificate(self, subject: frozenset[tuple[str, str]]) -> bool:
        """Whether a verified client certificate's *subject* has every attribute named."""
        return bool(self.tls_subject) and set(self.tls_subject) <= subject

    def __str__(self) -> str:
        return self.name or "-"


UNRESTRICTED: Final = Identity(None, (EVERYTHING,))
"""Every caller of an agent without an access file: everything allowed, as it always was."""


def certificate_subject(peercert: dict[str, Any] | None) -> frozenset[tuple[str, str]]:
    """The (attribute, value) pairs of a certificate's subject, from ``getpeercert()``."""
    if not peercert:
        return frozenset()
    return frozenset(
        (str(name), str(value)) for rdn in peercert.get("subject", ()) for name, value in rdn
    )


class Access:
    """The identities of one access file, looked up the ways the gate needs them."""

    def __init__(self, path: str, identities: Iterable[Identity]) -> None:
        self.path = path
        self.identities: dict[str, Identity] = {i.name: i for i in identities if i.name}

    def named(self, name: str) -> Identity | None:
        return self.identities.get(name)

    def by_uid(self, uid: int) -> Identity | None:
        return next((i for i in self.identities.values() if i.uid == uid), None)

    def by_certificate(self, subject: frozenset[tuple[str, str]]) -> list[Identity]:
        return [i for i in self.identities.values() if i.matches_certificate(subject)]

    @property
    def unix_uids(self) -> frozenset[int]:
        return frozenset(i.uid for i in self.identities.values() if i.uid is not None)

    def has(self, credential: str) -> bool:
        """Whether some identity uses *credential*: "cookie", "tls" or "unix"."""
        field = {"cookie": "cookie", "tls": "tls_subject", "unix": "uid"}[credential]
        return any(getattr(i, field) not in (None, ()) for i in self.identities.values())

    def unmatched_patterns(self, task_names: Iterable[str]) -> list[tuple[str, str]]:
        """(identity, pattern) for every task pattern that matches none of *task_names*."""
        names = list(task_names)
        return [
            (identity.name or "", pattern)
            for identity in self.identities.values()
            for pattern in identity.task_patterns
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names)
        ]


def load(path: str | os.PathLike[str]) -> Access:
    """Read and check the access file at *path*; AccessError naming the key that is wrong."""
    import tomllib

    path = os.path.abspath(os.fspath(path))
    try:
        data = tomllib.loads(_read_owner_only(path).decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        msg = f"{path}: not valid TOML ({exc})"
        raise AccessError(msg) from None
    for key in data:
        if key != "identity":
            raise _error(path, "", key, "unknown key", "[identity.NAME] tables only")
    tables = data.get("identity")
    if not isinstance(tables, dict) or not tables:
        msg = f"{path}: no [identity.NAME] table: an access file names at least one identity"
        raise AccessError(msg)
    identities = [_identity(path, name, table) for name, table in tables.items()]
    _no_shared_credentials(path, identities)
    return Access(path, identities)


def _read_owner_only(path: str) -> bytes:
    raw = cookies.read_owner_only(
        path, "access file", MAX_ACCESS_BYTES, AccessError, owners=cookies.agent_owners()
    )
    if len(raw) > MAX_ACCESS_BYTES:
        msg = f"access file {path} is longer than {MAX_ACCESS_BYTES} bytes"
        raise AccessError(msg)
    return raw


def _identity(path: str, name: str, table: object) -> Identity:
    where = f"identity.{name}"
    if not is_identity_name(name):
        expected = "1 to 64 letters, digits, _ . or -, starting with a letter or digit"
        raise _error(path, where, "", f"{name!r} is not a valid identity name", expected)
    if not isinstance(table, dict):
        raise _error(path, where, "", f"got {type(table).__name__}", "a table")
    for key in table:
        if key not in _IDENTITY_KEYS:
            raise _error(path, where, key, "unknown key", "one of " + ", ".join(_IDENTITY_KEYS))
    given = [key for key in _CREDENTIALS if key in table]
    if len(given) != 1:
        got = " and ".join(given) if given else "none"
        expected = "exactly one of cookie_file, tls_subject, unix_user (the identity's proof)"
        raise _error(path, where, "", f"got {got}", expected)
    allow = _allow(path, where, table)
    credential = given[0]
    value = table[credential]
    if credential == "cookie_file":
        if not isinstance(value, str) or not value:
            raise _error(path, where, credential, f"got {value!r}", _IDENTITY_KEYS[credential])
        cookie_path = os.path.join(os.path.dirname(path), value)
        try:
            secret = cookies.read_cookie_file(cookie_path, cookies.agent_owners())
        except cookies.CookieError as exc:
            raise _error(path, where, credential, str(exc), _IDENTITY_KEYS[credential]) from None
        return Identity(name, allow, cookie=secret)
    if credential == "tls_subject":
        return Identity(name, allow, tls_subject=_subject(path, where, value))
    return Identity(name, allow, uid=_uid(path, where, value))


def _allow(path: str, where: str, table: dict[str, Any]) -> tuple[str, ...]:
    expected = _IDENTITY_KEYS["allow"]
    if "allow" not in table:
        raise _error(path, where, "allow", "missing", expected)
    allow = table["allow"]
    if not isinstance(allow, list) or not all(isinstance(p, str) and p for p in allow):
        raise _error(path, where, "allow", f"got {allow!r}", expected)
    for pattern in allow:
        # A task's full name always has a dot (module.function): a plain word can only be
        # a grant, or a glob.
        if pattern not in (*GRANTS, EVERYTHING) and "." not in pattern and not _is_glob(pattern):
            raise _error(path, where, "allow", f"unknown grant {pattern!r}", expected)
    return tuple(allow)


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def _subject(path: str, where: str, value: object) -> tuple[tuple[str, str], ...]:
    expected = _IDENTITY_KEYS["tls_subject"] + f"; attributes among {', '.join(_SUBJECT_KEYS)}"
    if not isinstance(value, str) or not value.strip():
        raise _error(path, where, "tls_subject", f"got {value!r}", expected)
    pairs = []
    for part in value.split(","):
        key, eq, text = part.strip().partition("=")
        if not eq or key not in _SUBJECT_KEYS or not text:
            raise _error(path, where, "tls_subject", f"cannot read {part.strip()!r}", expected)
        pairs.append((_SUBJECT_KEYS[key], text))
    return tuple(pairs)


def _uid(path: str, where: str, value: object) -> int:
    import pwd

    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if not isinstance(value, str) or not value:
        raise _error(path, where, "unix_user", f"got {value!r}", _IDENTITY_KEYS["unix_user"])
    try:
        return pwd.getpwnam(value).pw_uid
    except KeyError:
        raise _error(
            path, where, "unix_user", f"no such user {value!r}", _IDENTITY_KEYS["unix_user"]
        ) from None


def _no_shared_credentials(path: str, identities: list[Identity]) -> None:
    """Two identities with one credential would let either holder be both."""
    seen: dict[object, str] = {}
    for identity in identities:
        for kind, credential in (
            ("cookie", identity.cookie),
            ("uid", identity.uid),
            ("tls_subject", frozenset(identity.tls_subject) or None),
        ):
            if credential is None:
                continue
            other = seen.setdefault((kind, credential), identity.name or "")
            if other != identity.name:
                what = {"cookie": "a cookie", "uid": "a UNIX user", "tls_subject": "a subject"}
                msg = (
                    f"{path}: [identity.{other}] and [identity.{identity.name}] share "
                    f"{what[kind]}: each identity needs its own, or either holder could be both"
                )
                raise AccessError(msg)


def _error(path: str, table: str, key: str, problem: str, expected: str) -> AccessError:
    where = f"[{table}] {key}".rstrip() if table else key
    return AccessError(f"{path}: {where}: {problem}; expected {expected}")
