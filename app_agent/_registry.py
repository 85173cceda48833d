"""The ``@task`` decorator and the registry of release tasks."""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import os
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from app_agent.exceptions import TaskRegistrationError

F = TypeVar("F", bound=Callable[..., Any])


@dataclasses.dataclass(frozen=True)
class Task:
    """One registered release task."""

    name: str
    """The full dotted path, ``module.function``: always accepted."""
    func: Callable[..., Any]
    alias: str | None = None
    """An optional short name given with ``@task(name=...)``."""
    log_values: bool = False
    """Whether the audit log may record argument values (they may carry secrets)."""
    record_args: bool = False
    """Whether the durable job history may keep argument values (a switch of its own: the
    history is read by anyone granted ``read`` and may be shared by a fleet)."""
    lock: str | None = None
    """A run-once lock held while the task runs (``@task(lock="migrations")``)."""
    timeout: float | None = None
    """Seconds after which the agent marks the job timed out and asks it to stop."""

    @functools.cached_property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.func)

    # Cached on first use, not at registration: annotations may name things defined later in
    # the task's module. (cached_property writes the instance dict, so frozen is fine.)
    @functools.cached_property
    def signature(self) -> inspect.Signature:
        try:
            # Real annotations, not the strings of ``from __future__ import annotations``.
            return inspect.signature(self.func, eval_str=True)
        except (NameError, TypeError, SyntaxError):
            return inspect.signature(self.func)

    @property
    def summary(self) -> str:
        """The first line of the docstring, or an empty string."""
        doc = inspect.getdoc(self.func) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    @functools.cached_property
    def display_signature(self) -> str:
        """``name(params) -> return``, without ``typing.`` noise."""
        return f"{self.name}{self.signature}".replace("typing.", "")

    def describe(self) -> dict[str, Any]:
        """Plain data for ``rpcctl tasks``."""
        return {
            "name": self.name,
            "alias": self.alias,
            "signature": self.display_signature,
            "doc": self.summary,
            "async": self.is_async,
            "lock": self.lock,
            "timeout": self.timeout,
        }

    @functools.cached_property
    def _takes_nothing_required(self) -> bool:
        return all(
            p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            for p in self.signature.parameters.values()
        )

    def bind(
        self, args: list[Any] | tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Any]]:
        """(args, kwargs, {name: value}) bound to the signature; TypeError shows it on a
        mismatch."""
        if not args and not kwargs and self._takes_nothing_required:
            return (), {}, {}
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            msg = f"{exc}; the signature is {self.display_signature}"
            raise TypeError(msg) from None
        return bound.args, bound.kwargs, bound.arguments


class Registry:
    """Tasks by full name and by alias; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_name: dict[str, Task] = {}
        self._by_alias: dict[str, Task] = {}

    def add(
        self,
        func: Callable[..., Any],
        alias: str | None = None,
        log_values: bool = False,
        lock: str | None = None,
        timeout: float | None = None,
        record_args: bool = False,
    ) -> Task:
        name = f"{_module_name(func)}.{func.__qualname__}"
        if "<locals>" in name:
            msg = f"{name}: a task must be a module-level function, reachable by a dotted path"
            raise TaskRegistrationError(msg)
        if timeout is not None and timeout <= 0:
            msg = f"{name}: timeout must be a positive number of seconds, got {timeout!r}"
            raise TaskRegistrationError(msg)
        record = Task(
            name=name,
            func=func,
            alias=alias,
            log_values=log_values,
            record_args=record_args,
            lock=lock,
            timeout=timeout,
        )
        with self._lock:
            if alias is not None:
                other = self._by_alias.get(alias) or self._by_name.get(alias)
                if other is not None and other.name != name:
                    msg = f"task alias {alias!r} of {name} is already taken by {other.name}"
                    raise TaskRegistrationError(msg)
            # Re-registering the same dotted path (a module reload) replaces the old record.
            old = self._by_name.pop(name, None)
            if old is not None and old.alias is not None:
                self._by_alias.pop(old.alias, None)
            self._by_name[name] = record
            if alias is not None:
                self._by_alias[alias] = record
        return record

    def get(self, name: str) -> Task | None:
        with self._lock:
            return self._by_name.get(name) or self._by_alias.get(name)

    def all(self) -> list[Task]:
        with self._lock:
            return sorted(self._by_name.values(), key=lambda t: t.name)

    def clear(self) -> None:
        with self._lock:
            self._by_name.clear()
            self._by_alias.clear()


def check_no_arguments(func: Callable[..., Any], what: str) -> None:
    """TypeError naming *what* (``health check myapp.db``) unless *func* can be called
    without arguments, as the agent calls health checks and drain hooks."""
    try:
        inspect.signature(func).bind()
    except TypeError:
        msg = f"{what} must be callable without arguments"
        raise TypeError(msg) from None
    except ValueError:
        pass  # no signature to inspect (a builtin): let the call tell


def _module_name(func: Callable[..., Any]) -> str:
    """The importable name of the function's module, also for ``python -m pkg`` and scripts."""
    module = func.__module__
    if module != "__main__":
        return module
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and spec.name:
        return str(spec.name).removesuffix(".__main__")
    filename = getattr(main, "__file__", None)
    if filename:
        return os.path.splitext(os.path.basename(str(filename)))[0]
    return module


registry = Registry()


def reset_registry() -> None:
    """Forget every registered task (for tests)."""
    registry.clear()


@overload
def task(func: F, /) -> F: ...


@overload
def task(
    *,
    name: str | None = None,
    log_values: bool = False,
    lock: str | None = None,
    timeout: float | None = None,
    record_args: bool = False,
) -> Callable[[F], F]: ...


def task(
    func: F | None = None,
    /,
    *,
    name: str | None = None,
    log_values: bool = False,
    lock: str | None = None,
    timeout: float | None = None,
    record_args: bool = False,
) -> F | Callable[[F], F]:
    """Register a function (plain or ``async def``) as a release task.

    ``@task`` registers ``module.function``; ``@task(name="migrate")`` adds an alias. The
    audit log records each call's argument names and sizes; ``log_values=True`` lets it
    record the values too (leave it off for tasks whose arguments may carry secrets);
    ``record_args=True`` lets the durable job history keep them (a switch of its own: the
    history is read by any identity granted ``read``, and on PostgreSQL shared by the fleet).
    ``lock="name"`` makes the task run once at a time under that lock (a second call waits
    up to its ``--lock-wait`` or fails with exit 7); ``timeout=S`` bounds it on the agent's
    side. The function itself is returned unchanged, so the app can still call it directly.
    """

    def register(f: F) -> F:
        if not callable(f):
            msg = f"@task needs a function, got {f!r}"
            raise TaskRegistrationError(msg)
        registry.add(
            f,
            alias=name,
            log_values=log_values,
            lock=lock,
            timeout=timeout,
            record_args=record_args,
        )
        return f

    if func is not None:
        return register(func)
    return register


def import_task_modules(modules: Iterable[str]) -> None:
    """Import modules so that their ``@task`` decorators run."""
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            msg = f"cannot import task module {module!r}: {exc}"
            raise TaskRegistrationError(msg) from exc
