"""The RPyC service: the only methods a caller can reach, built from the protocol's table.

:class:`AgentService` has one ``exposed_<name>`` method per entry of
:data:`app_agent.wire.protocol.METHODS`, generated below. Each does the same three steps,
here and nowhere else:

1. bind the raw arguments with :meth:`Method.bind <app_agent.wire.protocol.Method.bind>`
   (their types checked by ``type()`` alone, so a netref is never touched): a usage error
   naming the signature when they do not fit;
2. check the grants the entry names (:meth:`Method.grants_needed`): a refusal, audited,
   when the identity lacks one (``TASK`` and ``TASK_OR_READ`` depend on the task, which the
   handler checks once it knows it);
3. call the handler: the function of the same name in the entry's concept module
   (:data:`HANDLERS`), given the connection's :class:`~app_agent._caller.Caller` and the
   bound arguments by name.

**Adding a method** is one table entry in ``app_agent/wire/protocol.py`` and one handler
function ``def NAME(caller: Caller, ARG, ...) -> str`` in the module of its concept
(``app_agent/_server/handlers.py`` for core, ``_jobs/handlers.py``,
``_introspection/handlers.py``, ``_console/handlers.py``),
then one client call in ``rpcctl/client.py`` (``self._result("NAME", {"ARG": ARG})``);
tests/test_protocol.py proves the three agree. The grant goes in the entry (``READ``,
``STOP``, ... with the ``action`` a refusal names; an argument's own ``grant`` for what only
some values need); the handler checks only what depends on what it finds (``TASK``,
``TASK_OR_READ``: ``caller.may_not_run(...)``, ``caller.forbidden(READ, ...)``). An
``exposed_NAME`` written by hand in the class is kept as it is, not generated (a
method added before its handler exists); porting it is moving its body into a handler.

Every argument arrives as a plain value (str, int, float, bool, None; task arguments as JSON
text) and every result leaves as a ``str`` holding a reply envelope (:mod:`app_agent.wire`),
so no netref ever crosses in either direction.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType
from typing import Any

import rpyc

from app_agent import wire
from app_agent._caller import Caller
from app_agent._console import handlers as console_handlers
from app_agent._introspection import handlers as introspection_handlers
from app_agent._jobs import handlers as jobs_handlers
from app_agent._server import handlers as core_handlers
from app_agent.wire import ErrorKind, Reason
from app_agent.wire.protocol import METHODS, Method

PROTOCOL_CONFIG: dict[str, Any] = {
    # Only the service's exposed_ methods are reachable: RPyC's own rule, nothing else on.
    "allow_safe_attrs": False,
    "allow_exposed_attrs": True,
    "allow_public_attrs": False,
    "allow_all_attrs": False,
    "allow_setattr": False,
    "allow_delattr": False,
    "allow_pickle": False,
    "import_custom_exceptions": False,
    "instantiate_custom_exceptions": False,
    "instantiate_oldstyle_exceptions": False,
    "include_local_traceback": False,
    "propagate_SystemExit_locally": False,
    "propagate_KeyboardInterrupt_locally": False,
    "log_exceptions": False,
}

HANDLERS: dict[str, ModuleType] = {
    "core": core_handlers,
    "jobs": jobs_handlers,
    "introspection": introspection_handlers,
    "console": console_handlers,
}
"""Where each concept's handlers live: the handler of method ``m`` is
``getattr(HANDLERS[m.concept], m.name)``."""


def handler_of(method: Method) -> Callable[..., str] | None:
    """The function that serves *method*, None when its concept module has none."""
    module = HANDLERS.get(method.concept)
    found = getattr(module, method.name, None) if module is not None else None
    return found if callable(found) else None


class AgentService(rpyc.Service):  # type: ignore[misc]
    """One instance per connection; a caller reaches only its ``exposed_`` methods (RPyC's
    ``allow_exposed_attrs``, every other kind of attribute access off), one per entry of
    the protocol's table, and of those only what its identity is granted."""

    def __init__(self, caller: Caller) -> None:
        self.caller = caller

    @property
    def who(self) -> dict[str, Any]:
        """Who is calling, as every audit line names it: caller, auth, identity."""
        return dict(self.caller.who)

    def run_after_reply(self) -> None:
        """Run what waits for the reply to have left (the audit line of a call): the
        connection's thread calls this after each request it served, so the line costs the
        caller nothing and stays in call order."""
        self.caller.run_after_reply()

    def on_disconnect(self, conn: Any) -> None:
        self.caller.disconnected()

    def _dispatch(self, method: Method, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """Bind, check the grants, call the handler: every exposed method's whole body."""
        try:
            bound = method.bind(args, kwargs)
        except ValueError as exc:
            return wire.error(
                ErrorKind.USAGE, str(exc), Reason.BAD_ARGUMENTS, signature=method.signature()
            )
        caller = self.caller
        for grant, action in method.grants_needed(bound):
            if (refused := caller.forbidden(grant, action)) is not None:
                return refused
        return _HANDLER_OF[method.name](caller, **bound)


def _exposed(method: Method) -> Callable[..., str]:
    """The ``exposed_<name>`` method of *method*: its signature is the table's (what
    ``inspect`` and RPyC's introspection show), its body :meth:`AgentService._dispatch`."""

    def exposed(self: AgentService, *args: Any, **kwargs: Any) -> str:
        return self._dispatch(method, args, kwargs)

    exposed.__name__ = exposed.__qualname__ = f"exposed_{method.name}"
    exposed.__doc__ = method.doc or f"{method.signature()} -> {method.reply}"
    parameters = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    parameters += [
        inspect.Parameter(
            a.name,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=inspect.Parameter.empty if a.required else a.default,
        )
        for a in method.args
    ]
    exposed.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    return exposed


_HANDLER_OF: dict[str, Callable[..., str]] = {}
for _method in METHODS.values():
    _attribute = f"exposed_{_method.name}"
    if hasattr(AgentService, _attribute):
        # Written by hand (the old way, before a handler exists): kept as it is.
        continue
    _handler = handler_of(_method)
    if _handler is None:
        msg = f"{_method.name}: no handler {_method.name}() for concept {_method.concept!r}"
        raise ImportError(msg)
    _HANDLER_OF[_method.name] = _handler
    setattr(AgentService, _attribute, _exposed(_method))
del _method, _attribute, _handler
