"""The handshake's framing: one JSON line each way before any RPyC frame.

The client's hello names the protocol version and what it wants ("rpc": go on with RPyC;
"ping": answer and close); the agent answers with its version and either ok or an error
kind. See docs/wire.md and docs/security.md.
"""

from __future__ import annotations

from collections.abc import Mapping

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Final, NoReturn


PROTOCOL_VERSION: Final = 3
"""Bumped whenever the handshake or the service's methods change incompatibly (2: the agent's
proof covers its answer, and cookie connections without TLS carry authenticated records;
3: the hello may name an identity, bound into both proofs and the record keys, and the
agent's answer reports the app's name and version, covered by its proof)."""

MAX_IDENTITY_NAME: Final = 64
_IDENTITY_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"
)

MAX_HELLO_BYTES: Final = 4096
"""Upper bound of one handshake line; anything longer is refused before it is parsed."""

HANDSHAKE_TIMEOUT: Final = 2.0
"""Seconds a peer gets to complete the whole handshake (TLS included) before the agent drops
it: one deadline per connection, however slowly its bytes arrive."""


# The lines are flat JSON objects, read and written here without the json module: it would
# bring `re` (and enum, functools, collections) to every `rpcctl ping`, about a third of what
# the probe spends starting up. The agent parses the same way, which also refuses nesting
# before anything could recurse.

_ESCAPES: Final = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_UNESCAPES: Final = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_WHITESPACE: Final = " \t\r\n"
_NUMBER: Final = frozenset("0123456789+-.eE")


def is_identity_name(value: object) -> bool:
    """Whether *value* can name an identity: 1 to 64 letters, digits, ``_``, ``.`` or ``-``,
    starting with a letter or digit (so never a newline the proofs would trip on)."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_IDENTITY_NAME
        and value[0].isascii()
        and value[0].isalnum()
        and set(value) <= _IDENTITY_CHARS
    )


def encode_line(fields: Mapping[str, Any]) -> bytes:
    """One handshake line: a flat JSON object (string keys; str, int, float, bool or None
    values), ASCII only, ending in a newline. ValueError for anything else, or too long."""
    parts = [f"{_encode_string(key)}:{_encode_value(value)}" for key, value in fields.items()]
    line = ("{" + ",".join(parts) + "}\n").encode("ascii")
    if len(line) > MAX_HELLO_BYTES:
        msg = "handshake line too long"
        raise ValueError(msg)
    return line


def _encode_value(value: Any) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, int | float) and value == value and value not in (INF, -INF):
        return repr(value)
    msg = f"a handshake value cannot be {type(value).__name__}"
    raise ValueError(msg)


INF: Final = float("inf")


def _encode_string(text: Any) -> str:
    if not isinstance(text, str):
        msg = "handshake keys are strings"
        raise ValueError(msg)
    out = []
    for char in text:
        code = ord(char)
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif 0x20 <= code < 0x7F:
            out.append(char)
        elif code > 0xFFFF:  # a surrogate pair, as JSON spells it
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return '"' + "".join(out) + '"'


def decode_line(line: bytes) -> dict[str, Any]:
    """Parse one handshake line; ValueError (with a reason fit for the audit log) when it is
    not a flat JSON object carrying ``rpcctl``.

    The line comes from a peer that has not authenticated yet, so every failure is a
    ValueError: nested values are refused before anything recurses into them, and each
    value's type is checked where it is used.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        msg = "not an rpcctl handshake (not UTF-8)"
        raise ValueError(msg) from None
    fields = _FlatObject(text).parse()
    if "rpcctl" not in fields:
        msg = "not an rpcctl handshake"
        raise ValueError(msg)
    return fields


class _FlatObject:
    """A parser for one JSON object whose values are strings, numbers, booleans or null."""

    __slots__ = ("pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self) -> dict[str, Any]:
        result: dict[str, Any] = {}
        self._expect("{")
        if self._peek() == "}":
            self.pos += 1
        else:
            while True:
                self._skip()
                key = self._string()
                self._expect(":")
                result[key] = self._value()
                separator = self._next()
                if separator == "}":
                    break
                if separator != ",":
                    self._fail()
        if self._peek() != "":
            self._fail()
        return result

    def _skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in _WHITESPACE:
            self.pos += 1

    def _peek(self) -> str:
        self._skip()
        return self.text[self.pos : self.pos + 1]

    def _next(self) -> str:
        char = self._peek()
        self.pos += 1
        return char

    def _expect(self, char: str) -> None:
        if self._next() != char:
            self._fail()

    def _value(self) -> Any:
        char = self._peek()
        if char == '"':
            return self._string()
        if char in "{[":
            msg = "malformed handshake: nested values"
            raise ValueError(msg)
        for word, value in (("true", True), ("false", False), ("null", None)):
            if self.text.startswith(word, self.pos):
                self.pos += len(word)
                return value
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _NUMBER:
            self.pos += 1
        number = self.text[start : self.pos]
        try:
            return int(number) if number.lstrip("-").isdigit() else float(number)
        except ValueError:
            self._fail()

    def _string(self) -> str:
        if self._next() != '"':
            self._fail()
        out = []
        text = self.text
        while True:
            end = self.pos
            while end < len(text) and text[end] not in '"\\':
                end += 1
            chunk = text[self.pos : end]
            if any(ord(c) < 0x20 for c in chunk) or end >= len(text):
                self._fail()
            out.append(chunk)
            self.pos = end + 1
            if text[end] == '"':
                return "".join(out)
            escape = text[self.pos : self.pos + 1]
            self.pos += 1
            if escape in _UNESCAPES:
                out.append(_UNESCAPES[escape])
            elif escape == "u":
                out.append(self._unicode())
            else:
                self._fail()

    def _unicode(self) -> str:
        code = self._hex4()
        if 0xD800 <= code < 0xDC00 and self.text.startswith("\\u", self.pos):
            self.pos += 2
            low = self._hex4()
            if 0xDC00 <= low < 0xE000:
                return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00))
            return chr(code) + chr(low)
        return chr(code)

    def _hex4(self) -> int:
        digits = self.text[self.pos : self.pos + 4]
        self.pos += 4
        if len(digits) != 4 or not all(c in "0123456789abcdefABCDEF" for c in digits):
            self._fail()
        return int(digits, 16)

    def _fail(self) -> NoReturn:
        msg = "not an rpcctl handshake (not JSON)"
        raise ValueError(msg)


class LineReader:
    """Collects one handshake line from chunks as they arrive: the agent feeds it from a
    non-blocking socket, the client from a blocking one."""

    __slots__ = ("buffer",)

    def __init__(self) -> None:
        self.buffer = b""

    @property
    def room(self) -> int:
        """How many more bytes a line may take."""
        return MAX_HELLO_BYTES - len(self.buffer)

    def feed(self, chunk: bytes) -> bytes | None:
        """Add *chunk*: the whole line (newline included) once it is complete, else None.

        ValueError when the line grows past the limit, or bytes follow it: each side waits
        for the other's answer before it sends more.
        """
        self.buffer += chunk
        line, newline, rest = self.buffer.partition(b"\n")
        if newline:
            if rest:
                msg = "data after the handshake line"
                raise ValueError(msg)
            self.buffer = b""
            return line + newline
        if len(self.buffer) >= MAX_HELLO_BYTES:
            msg = "handshake line too long"
            raise ValueError(msg)
        return None
