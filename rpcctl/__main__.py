"""``rpcctl`` and ``python -m rpcctl``.

``rpcctl ping`` is what probes run every few seconds, so its common forms are served here
without importing click (or RPyC, or structlog): the same node and cookie resolution, the
same output and exit codes. Any other command, option or form goes to the click CLI.
"""

from __future__ import annotations

import sys

from rpcctl._settings import FLAG, GLOBAL_OPTIONS, PING_OPTIONS, Option, Settings

# Without importing typing (which costs the ping path ~10 ms); mypy knows this name.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# The options a single node's ping can take, read from the definitions the click commands
# are built from; a fleet's (and --json, --help) go to the click CLI.
_FLEET = ("nodes_file", "discover")
_GLOBAL = {f: o for o in GLOBAL_OPTIONS if o.dest not in _FLEET for f in o.flags}
_PING = {f: o for o in PING_OPTIONS for f in o.flags}


def parse(argv: list[str]) -> dict[str, Any] | None:
    """``ping`` with global options before or after it and its own after it: every option's
    value by its dest (ping's own with their defaults); None for any other form (another
    command, an option or value not served here, a repeated option such as several
    nodes), which the click CLI handles."""
    given: dict[str, Any] = {}
    ping = False
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "ping" and not ping:
            ping = True
            continue
        # click takes "--opt=value" for long options only: "-n=x" would be the node "=x".
        flag, eq, text = word.partition("=") if word.startswith("--") else (word, "", "")
        option: Option | None = _GLOBAL.get(flag) or (_PING.get(flag) if ping else None)
        if option is None or option.dest in given:
            return None
        if option.kind == FLAG:
            if eq:
                return None
            given[option.dest] = True
            continue
        if not eq:
            if i >= len(argv):
                return None
            text = argv[i]
            i += 1
        try:
            given[option.dest] = option.convert(text)
        except ValueError:
            return None  # click words the usage error
    if not ping:
        return None
    for option in PING_OPTIONS:
        given.setdefault(option.dest, False if option.kind == FLAG else option.default)
    return given


def settings_from(given: dict[str, Any]) -> Settings:
    """The global options of :func:`parse`'s result, applied as the click group applies them."""
    settings = Settings()
    for option in GLOBAL_OPTIONS:
        value = given.get(option.dest)
        settings.apply(option.dest, [value] if option.multiple and value else value)
    return settings


def _fast_ping(argv: list[str]) -> int | None:
    """Run ``ping`` without click; None when *argv* is not a form handled here."""
    given = parse(argv)
    if given is None:
        return None

    from rpcctl import waits
    from rpcctl.exceptions import RpcctlError

    settings = settings_from(given)
    wait, ready, timeout = given["wait"], given["ready"], given["timeout"]
    try:
        address = settings.address()
        security = settings.security()
        if wait is not None:
            waits.wait_for(address, wait, security, ready=ready)
        else:
            waits.ping(address, timeout, security, ready=ready)
    except RpcctlError as exc:
        sys.stderr.write(f"rpcctl: error: {settings.explain(exc)}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write(
            "\nrpcctl: interrupted\n" if sys.stderr.isatty() else "rpcctl: interrupted\n"
        )
        from app_agent.wire.errors import INTERRUPTED

        return INTERRUPTED
    sys.stdout.write("pong\n")
    return 0


def main() -> None:
    status = _fast_ping(sys.argv[1:])
    if status is not None:
        sys.exit(status)
    from rpcctl.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
