"""``rpcctl`` and ``python -m rpcctl``.

``rpcctl ping`` is what probes run every few seconds, so its common forms are served here
without importing click (or RPyC, or structlog): the same node and cookie resolution, the
same output and exit codes. Any other command, option or form goes to the click CLI.
"""

from __future__ import annotations

import sys

_GLOBAL = {
    "-n": "node",
    "--node": "node",
    "--config": "config_path",
    "--cookie-file": "cookie_file",
    "--identity": "identity",
    "--tls-ca": "tls_ca",
    "--tls-cert": "tls_cert",
    "--tls-key": "tls_key",
}
_PING = {"--wait": "wait", "--timeout": "timeout"}


def _options(args: list[str], known: dict[str, str]) -> tuple[dict[str, str], list[str]] | None:
    """Leading ``--opt value`` / ``--opt=value`` pairs from *known*; None if any other flag."""
    found: dict[str, str] = {}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        flag, eq, value = args[i].partition("=")
        if flag not in known or (not eq and i + 1 >= len(args)):
            return None
        if not eq:
            i += 1
            value = args[i]
        if known[flag] in found:
            return None  # a repeated option (several nodes): the click CLI's fleet mode
        found[known[flag]] = value
        i += 1
    return found, args[i:]


def _fast_ping(argv: list[str]) -> int | None:
    """Run ``ping`` without click; None when *argv* is not a form handled here."""
    split = _options(argv, _GLOBAL)
    if split is None or split[1][:1] != ["ping"]:
        return None
    globals_, rest = split
    ready = "--ready" in rest[1:]
    ping_split = _options([a for a in rest[1:] if a != "--ready"], _PING)
    if ping_split is None or ping_split[1]:
        return None
    try:
        wait = float(ping_split[0]["wait"]) if "wait" in ping_split[0] else None
        timeout = float(ping_split[0].get("timeout", "5"))
    except ValueError:
        return None  # click words the usage error
    if (wait is not None and wait < 0) or timeout <= 0:
        return None

    from rpcctl import waits
    from rpcctl._settings import Settings
    from rpcctl.exceptions import RpcctlError

    settings = Settings()
    settings.node = globals_.get("node")
    settings.config_path = globals_.get("config_path")
    settings.cookie_file = globals_.get("cookie_file")
    settings.identity = globals_.get("identity")
    settings.tls = {k: globals_.get(f"tls_{k}") for k in ("ca", "cert", "key")}
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
