"""rpc expressions: literals only, never evaluated, errors point at the offending part."""

from __future__ import annotations

import pytest

from rpcctl.exceptions import BadExpression
from rpcctl.expr import Call, parse, suggest


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("myapp.tasks.migrate", Call("myapp.tasks.migrate")),
        ("migrate", Call("migrate")),
        ("myapp.tasks.migrate()", Call("myapp.tasks.migrate")),
        ('m.f("abc", steps=2)', Call("m.f", ("abc",), {"steps": 2})),
        (
            'm.f(opts={"dry": True, "n": None}, xs=[1, -2.5, (3, 4)])',
            Call("m.f", (), {"opts": {"dry": True, "n": None}, "xs": [1, -2.5, [3, 4]]}),
        ),
        ("  m.f( 'x' )  ", Call("m.f", ("x",))),
        ('m.f(\n  "multi",\n  line=1)', Call("m.f", ("multi",), {"line": 1})),
        ('m.f("héllo", x=+1)', Call("m.f", ("héllo",), {"x": 1})),
    ],
)
def test_parses_names_and_literal_arguments(text: str, expected: Call) -> None:
    assert parse(text) == expected


@pytest.mark.parametrize(
    ("text", "offending", "says"),
    [
        ('m.f(os.system("x"))', 'os.system("x")', "not a call"),
        ("m.f(foo)", "foo", "not a name"),
        ("m.f(a.b)", "a.b", "not an attribute"),
        ("m.f(lambda: 1)", "lambda: 1", "not a lambda"),
        ("m.f(x=1 + 2)", "1 + 2", "not an operation"),
        ("m.f({1, 2})", "{1, 2}", "a set"),
        ("m.f(b'raw')", "b'raw'", "bytes literal"),
        ("m.f(*xs)", "*xs", "*-unpacking"),
        ("m.f(**kw)", "kw", "**-unpacking"),
        ("m.f({1: 2})", "1", "dict keys must be strings"),
        ('m.f(f"{x}")', 'f"{x}"', "f-string"),
        ("m.f()()", "m.f()", "dotted name"),
        ('"abc"', '"abc"', "dotted name"),
        ("m[0]", "m[0]", "dotted name"),
        # Python refuses a repeated keyword (SyntaxError); so does the parser.
        ("m.f(a=1, a=2)", "a=2", "keyword argument 'a' is repeated"),
        ('m.f(1, steps=2, dry=True, steps="x")', 'steps="x"', "'steps' is repeated"),
    ],
)
def test_rejects_non_literals_pointing_at_them(text: str, offending: str, says: str) -> None:
    with pytest.raises(BadExpression) as caught:
        parse(text)
    message = caught.value.message
    first_line, source_line, pointer = message.splitlines()
    assert says in first_line
    assert source_line.strip() == text
    # The carets sit exactly under the offending text.
    start = pointer.index("^")
    assert source_line[start : start + len(offending)] == offending


@pytest.mark.parametrize("text", ["", "   ", "m.f(", "m.f(1,,2)", "import os", "m.f(); x"])
def test_rejects_malformed_expressions(text: str) -> None:
    with pytest.raises(BadExpression) as caught:
        parse(text)
    assert caught.value.exit_code == 2
    assert caught.value.message.startswith(("bad expression", "empty expression"))


def test_pointer_counts_characters_not_bytes() -> None:
    with pytest.raises(BadExpression) as caught:
        parse('m.f("ééé", bad)')
    _, source_line, pointer = caught.value.message.splitlines()
    start = pointer.index("^")
    assert source_line[start : start + 3] == "bad"


@pytest.mark.parametrize(
    ("words", "meant"),
    [
        (["mod.f", "1"], "mod.f(1)"),
        (["myapp.tasks.migrate", "head"], 'myapp.tasks.migrate("head")'),
        (
            ["m.f", "1", "[1, 2]", "x=2", "dry=True", "name=bob"],
            'm.f(1, [1, 2], x=2, dry=True, name="bob")',
        ),
        (["m.f(1,", "2)"], "m.f(1, 2)"),  # a quoted expression the shell split anyway
        (["m.f", "a b"], 'm.f("a b")'),
    ],
)
def test_suggest_joins_shell_words_into_the_expression(words: list[str], meant: str) -> None:
    assert suggest(words) == meant
    parse(meant)  # and what it suggests parses
