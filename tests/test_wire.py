"""The shared contract: node addresses, the JSON rule for results, exit codes."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import json
import math
import pathlib
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app_agent import wire
from app_agent.wire import Address, AddressError, ErrorKind
from conftest import EXIT_CODES


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:/run/app.sock", Address("unix", path="/run/app.sock")),
        ("unix:///run/app.sock", Address("unix", path="/run/app.sock")),
        ("tcp://127.0.0.1:4000", Address("tcp", host="127.0.0.1", port=4000)),
        ("tcp://[::1]:4000", Address("tcp", host="::1", port=4000)),
        ("tcp://localhost:0", Address("tcp", host="localhost", port=0)),
        ("tls://db.example:443", Address("tls", host="db.example", port=443)),
    ],
)
def test_parse_node(text: str, expected: Address) -> None:
    assert wire.parse_node(text) == expected


def test_relative_unix_path_is_relative_to_base(tmp_path: pathlib.Path) -> None:
    assert wire.parse_node("unix:run/a.sock", base_dir=tmp_path).path == str(
        tmp_path / "run/a.sock"
    )


@pytest.mark.parametrize(
    "text", ["", "unix:", "/run/app.sock", "tcp://host", "tcp://:80", "tcp://h:99999", "http://h:1"]
)
def test_bad_nodes_say_what_is_expected(text: str) -> None:
    expected = r"expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT|path is empty"
    with pytest.raises(AddressError, match=expected):
        wire.parse_node(text)


def test_address_round_trips_through_str() -> None:
    for text in ("unix:/a/b.sock", "tcp://127.0.0.1:1", "tcp://[::1]:2"):
        assert str(wire.parse_node(text)) == text


def test_exit_codes_are_the_documented_table() -> None:
    assert {k.value: k.exit_code for k in ErrorKind} == {
        kind: code for kind, code in EXIT_CODES.items() if kind not in ("ok", "interrupted")
    }
    assert EXIT_CODES["interrupted"] == wire.errors.INTERRUPTED


class Colour(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_to_plain_converts_by_the_documented_rule() -> None:
    class Opaque:
        def __repr__(self) -> str:
            return "<Opaque>"

    value = {
        "dt": datetime.datetime(2026, 1, 2, 3, 4, 5),
        "d": datetime.date(2026, 1, 2),
        "td": datetime.timedelta(seconds=90),
        "dec": decimal.Decimal("1.10"),
        "uuid": uuid.UUID(int=1),
        "path": pathlib.PurePosixPath("/x"),
        "set": {3, 1, 2},
        "mixed_set": {1, "a"},
        "tuple": (1, (2, 3)),
        "enum": Colour.RED,
        "dc": Point(1, 2),
        "text_bytes": b"hi",
        "raw_bytes": b"\xff",
        "nan": math.nan,
        "inf": -math.inf,
        "opaque": Opaque(),
        7: "int key",
    }
    plain = wire.to_plain(value)
    assert plain["dt"] == "2026-01-02T03:04:05"
    assert plain["d"] == "2026-01-02"
    assert plain["td"] == 90.0
    assert plain["dec"] == "1.10"
    assert plain["uuid"] == "00000000-0000-0000-0000-000000000001"
    assert plain["path"] == "/x"
    assert plain["set"] == [1, 2, 3]
    assert sorted(plain["mixed_set"], key=str) == [1, "a"]
    assert plain["tuple"] == [1, [2, 3]]
    assert plain["enum"] == "red"
    assert plain["dc"] == {"x": 1, "y": 2}
    assert plain["text_bytes"] == "hi"
    assert plain["raw_bytes"] == {"base64": "/w=="}
    assert plain["nan"] == "NaN"
    assert plain["inf"] == "-Infinity"
    assert plain["opaque"] == "<Opaque>"
    assert plain["7"] == "int key"
    # and the whole thing is strict JSON
    json.loads(wire.dumps(value))


def test_is_plain_accepts_only_json_data() -> None:
    assert wire.is_plain([1, "a", None, True, 1.5, {"k": [1]}])
    assert not wire.is_plain((1,))
    assert not wire.is_plain({1: 2})
    assert not wire.is_plain(math.nan)
    assert not wire.is_plain(object())


def test_handshake_lines() -> None:
    line = wire.encode_line({"rpcctl": wire.PROTOCOL_VERSION, "op": "ping"})
    assert line.endswith(b"\n")
    assert wire.decode_line(line) == {"rpcctl": wire.PROTOCOL_VERSION, "op": "ping"}
    for bad in (b"\xff\n", b"[1]\n", b'{"other": 1}\n', b"GET / HTTP/1.1\r\n"):
        with pytest.raises(ValueError, match="not an rpcctl handshake"):
            wire.decode_line(bad)


FLAT_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**12), 10**12), st.text(max_size=40)
)
FLAT = st.dictionaries(st.text(max_size=12), FLAT_VALUES, max_size=6)


@settings(max_examples=300, deadline=None)
@given(message=FLAT)
def test_handshake_lines_are_json_both_ways(message: dict[str, Any]) -> None:
    """The handshake's own flat-JSON codec (no json module on the ping path) agrees with json:
    what it writes json reads, and what json writes (ASCII or not, spaced or not) it reads."""
    full = {"rpcctl": 2, **message}
    line = wire.encode_line(full)
    assert json.loads(line) == full
    assert wire.decode_line(line) == full
    for text in (json.dumps(full), json.dumps(full, ensure_ascii=False, separators=(",", ":"))):
        assert wire.decode_line(text.encode() + b"\n") == full


@settings(max_examples=1000, deadline=None)
@given(data=st.binary(max_size=300))
def test_hostile_handshake_lines_are_values_or_value_errors(data: bytes) -> None:
    try:
        decoded = wire.decode_line(b'{"rpcctl":' + data)
    except ValueError:
        return
    assert isinstance(decoded, dict)
    assert not any(isinstance(v, dict | list) for v in decoded.values())


def test_every_rpcctl_name_is_written_once() -> None:
    """app_agent.wire.environment names every RPCCTL_* variable and Django setting; code
    elsewhere uses those names, never a literal of its own (docstrings and messages may
    mention them)."""
    import ast

    from app_agent.wire import environment
    from conftest import ROOT

    names = [v for k, v in vars(environment).items() if k.isupper() and isinstance(v, str)]
    assert len(names) == len(set(names))
    assert all(n == "RPCCTL" or n.startswith("RPCCTL_") for n in names)
    literals = []
    for package in ("app_agent", "rpcctl"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "app_agent" / "wire" / "environment.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str):
                    name = node.value.removeprefix("$")  # ("RPCCTL" alone is also a column)
                    if name.startswith("RPCCTL_") and name[7:].replace("_", "").isupper():
                        literals.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value}")
    assert literals == []
