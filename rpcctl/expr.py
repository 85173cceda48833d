"""Parse an ``rpc`` expression: ``module.func`` or ``module.func(<literals>)``.

The expression is parsed with :mod:`ast` and never evaluated: the function part must be a
dotted name and every argument a literal (str, int, float, bool, None, and lists, tuples
and dicts of them), so ``rpcctl rpc`` can never run code on the operator's machine and only
sends plain data to the agent.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from rpcctl.exceptions import BadExpression


@dataclasses.dataclass(frozen=True)
class Call:
    """A parsed expression: the task name and its arguments."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)


def parse(text: str) -> Call:
    """Parse *text*; BadExpression points at the offending part."""
    # One line, so the pointer under the expression lines up.
    source = " ".join(text.split("\n")).strip()
    if not source:
        msg = "empty expression: expected module.func or module.func(args)"
        raise BadExpression(msg)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as exc:
        column = (exc.offset or 1) - 1
        raise _error(source, f"invalid syntax ({exc.msg})", column, column + 1) from None
    node = tree.body
    if isinstance(node, ast.Call):
        name = _dotted_name(source, node.func)
        args = tuple(_literal(source, arg, f"argument {i}") for i, arg in enumerate(node.args, 1))
        kwargs: dict[str, Any] = {}
        for keyword in node.keywords:
            if keyword.arg is None:
                raise _at(source, keyword.value, "**-unpacking is not allowed; pass key=value")
            if keyword.arg in kwargs:
                # Python refuses this too (SyntaxError: keyword argument repeated).
                raise _at(source, keyword, f"keyword argument {keyword.arg!r} is repeated")
            kwargs[keyword.arg] = _literal(source, keyword.value, f"argument {keyword.arg}=")
        return Call(name, args, kwargs)
    return Call(_dotted_name(source, node))


def suggest(words: Sequence[str]) -> str:
    """The expression meant by shell words given as separate arguments:
    ``mod.f 1 head key=2`` -> ``mod.f(1, "head", key=2)``; a bare word becomes a string."""
    name, *rest = words
    if "(" in name:
        return " ".join(words)  # an expression the shell split at its spaces
    parts = []
    for word in rest:
        key, eq, value = word.partition("=")
        if eq and key.isidentifier():
            parts.append(f"{key}={_as_literal(value)}")
        else:
            parts.append(_as_literal(word))
    return f"{name}({', '.join(parts)})"


def _as_literal(word: str) -> str:
    try:
        ast.literal_eval(word)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return json.dumps(word, ensure_ascii=False)
    return word


def _dotted_name(source: str, node: ast.expr) -> str:
    parts: list[str] = []
    current = node
    while isinstance(current, ast.Attribute):
        parts.append(current.attr)
        current = current.value
    if not isinstance(current, ast.Name):
        raise _at(source, node, "the function must be a dotted name like myapp.tasks.migrate")
    parts.append(current.id)
    return ".".join(reversed(parts))


_KIND = {
    ast.Name: "a name",
    ast.Attribute: "an attribute",
    ast.Call: "a call",
    ast.Lambda: "a lambda",
    ast.BinOp: "an operation",
    ast.Subscript: "a subscript",
    ast.Starred: "*-unpacking",
    ast.JoinedStr: "an f-string",
    ast.Set: "a set (not JSON)",
    ast.Compare: "a comparison",
    ast.BoolOp: "a boolean operation",
    ast.IfExp: "a conditional",
    ast.ListComp: "a comprehension",
    ast.DictComp: "a comprehension",
    ast.SetComp: "a comprehension",
    ast.GeneratorExp: "a generator",
    ast.NamedExpr: "an assignment",
    ast.Await: "an await",
}


_NOT_FINITE = frozenset({"inf", "infinity", "nan"})
"""Names (any case) a user may type for the numbers JSON cannot carry."""


def _literal(source: str, node: ast.expr, where: str) -> Any:
    if isinstance(node, ast.Constant):
        if isinstance(node.value, float) and not math.isfinite(node.value):
            raise _not_finite(source, node, where, overflow=True)
        if node.value is None or isinstance(node.value, bool | int | float | str):
            return node.value
        kind = type(node.value).__name__
        raise _at(source, node, f"{where} is a {kind} literal, which is not JSON data")
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = node.operand
        if isinstance(operand, ast.Constant) and type(operand.value) in (int, float):
            number: int | float = operand.value  # type: ignore[assignment]
            if not math.isfinite(number):
                raise _not_finite(source, node, where, overflow=True)
            return -number if isinstance(node.op, ast.USub) else number
        if isinstance(operand, ast.Name) and operand.id.lower() in _NOT_FINITE:
            raise _not_finite(source, node, where)
    if isinstance(node, ast.Name) and node.id.lower() in _NOT_FINITE:
        raise _not_finite(source, node, where)
    if isinstance(node, ast.List | ast.Tuple):
        return [_literal(source, item, where) for item in node.elts]
    if isinstance(node, ast.Dict):
        result: dict[str, Any] = {}
        for key, item in zip(node.keys, node.values, strict=True):
            if key is None:
                raise _at(source, item, f"{where}: **-unpacking is not allowed in a dict")
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                raise _at(source, key, f"{where}: dict keys must be strings")
            result[key.value] = _literal(source, item, where)
        return result
    kind = _KIND.get(type(node), "not a literal")
    raise _at(
        source,
        node,
        f"{where} must be a literal (string, number, True/False/None, list, dict), not {kind}",
    )


def _not_finite(source: str, node: ast.AST, where: str, overflow: bool = False) -> BadExpression:
    why = (
        "it is beyond a float's range (about 1.8e308), and JSON has no infinity"
        if overflow
        else "JSON has no infinity or NaN"
    )
    return _at(source, node, f"{where} is not a finite number: {why}")


def _at(source: str, node: ast.AST, message: str) -> BadExpression:
    start = _chars(source, getattr(node, "col_offset", 0))
    end = _chars(source, getattr(node, "end_col_offset", None) or 0) or start + 1
    return _error(source, message, start, end)


def _chars(source: str, byte_offset: int) -> int:
    """ast reports UTF-8 byte offsets; the pointer needs character offsets."""
    return len(source.encode("utf-8")[:byte_offset].decode("utf-8", errors="ignore"))


def _error(source: str, message: str, start: int, end: int) -> BadExpression:
    snippet = source[start:end]
    pointer = " " * start + "^" * max(end - start, 1)
    where = f" at {snippet!r}" if snippet.strip() else ""
    return BadExpression(f"bad expression{where}: {message}\n  {source}\n  {pointer}")
