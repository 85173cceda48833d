"""Which nodes a fleet command reaches: repeated ``-n``, a nodes file, DNS discovery."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable

from app_agent import wire
from app_agent.wire import Address
from rpcctl.exceptions import ConfigError, Unreachable


def parse_node(text: str, base_dir: str | None = None) -> Address:
    """An Address from *text*; ConfigError (exit 2) naming every accepted form."""
    try:
        return wire.parse_node(text, base_dir=base_dir)
    except wire.AddressError as exc:
        raise ConfigError(str(exc)) from None


def read_nodes_file(path: str) -> list[str]:
    """Addresses from a file: one a line, ``#`` comments and blank lines ignored."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as exc:
        msg = f"cannot read nodes file {path}: {exc.strerror}"
        raise ConfigError(msg) from None
    nodes = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        try:
            parse_node(text, base_dir=os.path.dirname(os.path.abspath(path)))
        except ConfigError as exc:
            msg = f"{path}:{number}: {exc.message}"
            raise ConfigError(msg) from None
        nodes.append(text)
    return nodes


def discover(spec: str) -> list[str]:
    """``dns:NAME:PORT`` (or ``dns+tls:NAME:PORT``): a node for every A/AAAA record of NAME,
    what a Kubernetes headless service resolves to."""
    scheme = "tcp"
    if spec.startswith("dns+tls:"):
        scheme, rest = "tls", spec.removeprefix("dns+tls:")
    elif spec.startswith("dns:"):
        rest = spec.removeprefix("dns:")
    else:
        msg = f"bad discovery {spec!r}: expected dns:NAME:PORT or dns+tls:NAME:PORT"
        raise ConfigError(msg)
    name, _, port = rest.rpartition(":")
    if not name or not port.isdigit():
        msg = f"bad discovery {spec!r}: expected dns:NAME:PORT"
        raise ConfigError(msg)
    try:
        infos = socket.getaddrinfo(name, int(port), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        msg = f"discovery: cannot resolve {name!r} ({exc.strerror})"
        raise Unreachable(msg) from None
    seen: dict[str, None] = {}
    for family, _type, _proto, _name, sockaddr in infos:
        host = str(sockaddr[0])
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        seen.setdefault(f"{scheme}://{shown}:{port}", None)
    return list(seen)


def resolve_nodes(
    nodes: Iterable[str], nodes_file: str | None, discover_spec: str | None
) -> list[str]:
    """The union of -n nodes, a nodes file and discovery, in that order, without repeats."""
    found: dict[str, None] = dict.fromkeys(nodes)
    if nodes_file:
        found.update(dict.fromkeys(read_nodes_file(nodes_file)))
    if discover_spec:
        found.update(dict.fromkeys(discover(discover_spec)))
    return list(found)
