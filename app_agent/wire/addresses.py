"""Node addresses: ``unix:PATH``, ``tcp://HOST:PORT`` and ``tls://HOST:PORT``."""

from __future__ import annotations

import os

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Final


class AddressError(ValueError):
    """A node address that is not ``unix:PATH``, ``tcp://HOST:PORT`` or ``tls://HOST:PORT``."""


if TYPE_CHECKING:
    from typing import NamedTuple

    class _Fields(NamedTuple):
        scheme: str  # "unix", "tcp" or "tls"
        path: str = ""
        host: str = ""
        port: int = 0

else:  # the same tuple without importing typing, which costs the ping path ~10 ms
    import collections

    _Fields = collections.namedtuple("_Fields", "scheme path host port", defaults=("", "", 0))


class Address(_Fields):
    """A parsed node address: an immutable, comparable, hashable tuple."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Address({str(self)!r})"

    @property
    def is_unix(self) -> bool:
        return self.scheme == "unix"

    @property
    def is_loopback(self) -> bool:
        if self.is_unix:
            return True
        if self.host == "localhost":
            return True
        import ipaddress

        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        if self.is_unix:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


_NODE_FORMS: Final = "expected unix:PATH, tcp://HOST:PORT or tls://HOST:PORT"


def parse_node(text: str, base_dir: str | os.PathLike[str] | None = None) -> Address:
    """Parse a node address; a relative UNIX path is taken relative to *base_dir* (or cwd)."""
    text = text.strip()
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if path.startswith("//"):
            path = path[2:]
        if not path:
            msg = f"bad node address {text!r}: the UNIX socket path is empty ({_NODE_FORMS})"
            raise AddressError(msg)
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(base_dir, path)
        return Address("unix", path=os.path.abspath(path))
    for scheme in ("tcp", "tls"):
        prefix = f"{scheme}://"
        if text.startswith(prefix):
            return _parse_host_port(scheme, text, text[len(prefix) :])
    msg = f"bad node address {text!r}: {_NODE_FORMS}{_meant(text)}"
    raise AddressError(msg)


def _meant(text: str) -> str:
    """The address a scheme-less *text* most likely meant, as a hint; "" when unclear."""
    if "://" in text or not text:
        return ""
    if text.startswith(("/", "./", "../")) or text.endswith(".sock"):
        return f"; for the UNIX socket at that path, write unix:{text}"
    host, sep, port = text.rpartition(":")
    if sep and host and port.isdigit():
        return f"; for TCP, write tcp://{text}"
    return ""


def _parse_host_port(scheme: str, text: str, rest: str) -> Address:
    if rest.startswith("["):
        host, sep, port_text = rest[1:].partition("]:")
    else:
        host, sep, port_text = rest.rpartition(":")
    if not sep or not host or not port_text.isdigit() or int(port_text) > 65535:
        msg = f"bad node address {text!r}: {_NODE_FORMS}"
        raise AddressError(msg)
    return Address(scheme, host=host, port=int(port_text))
