"""``rpcctl`` and ``python -m rpcctl``.

``rpcctl ping`` is what probes run every few seconds, so its common forms are served here
without importing click (or RPyC, or structlog): the same node and cookie resolution, the
same output and exit codes. Any other command, option or form goes to the click CLI.
"""

from __future__ import annotations

import sys

from rpcctl._settings import GLOBAL_OPTIONS

# The global options a single node's ping can take (a fleet's go to the click CLI), read
# from the table the click group is built from; ping's own, as the click command has them.
_FLEET = ("nodes_file", "discover")
_GLOBAL = {f: o.dest for o in GLOBAL_OPTIONS if o.dest not in _FLEET for f in o.flags}
_PING = {"--wait": "wait", "--timeout": "timeout"}


def _parse(argv: list[str]) -> tuple[dict[str, str], bool] | None:
    """``ping`` with global options before or after it and its own after it: the options
    and ``--ready``; None for any other form (another command, a flag not served here, a
    repeated option such as several nodes), which the click CLI handles."""
    found: dict[str, str] = {}
    ping = ready = False
    i = 0
    while i < len(argv):
        word = argv[i]
        i += 1
        if word == "ping" and not ping:
            ping = True
            continue
        if word == "--ready" and ping and not ready:
            ready = True
            continue
        # click takes "--opt=value" for long options only: "-n=x" would be the node "=x".
        flag, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        dest = _GLOBAL.get(flag) or (_PING.get(flag) if ping else None)
        if dest is None or dest in found:
            return None
        if not eq:
            if i >= len(argv):
                return None
            value = argv[i]
            i += 1
        found[dest] = value
    return (found, ready) if ping else None


def _fast_ping(argv: list[str]) -> int | None:
    """Run ``ping`` without click; None when *argv* is not a form handled here."""
    parsed = _parse(argv)
    if parsed is None:
        return None
    options, ready = parsed
    try:
        wait = float(options["wait"]) if "wait" in options else None
        timeout = float(options.get("timeout", "5"))
    except ValueError:
        return None  # click words the usage error
    if (wait is not None and wait < 0) or timeout <= 0:
        return None

    from rpcctl import waits
    from rpcctl._settings import Settings
    from rpcctl.exceptions import RpcctlError

    settings = Settings()
    for option in GLOBAL_OPTIONS:
        value = options.get(option.dest)
        settings.apply(option.dest, [value] if option.multiple and value else value)
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
