"""``rpcctl`` and ``python -m rpcctl``."""

from __future__ import annotations


def main() -> None:
    from rpcctl.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
