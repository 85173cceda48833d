"""What a newcomer's own app tripped over (issue #23), through the real executable, real
app processes and a real bin/NAME launcher."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEADLINE, SAMPLEAPP, AppProcess, rpcctl_executable
from rpcctl.release import scaffold


class Launcher:
    """A release made by `release init`, its app tests/apps/sampleapp.py, run as typed."""

    def __init__(self, root: Path) -> None:
        self.root = root
        scaffold.init("shop", root, module="sampleapp", launcher_rpcctl=rpcctl_executable())
        command = ", ".join(json.dumps(part) for part in SAMPLEAPP)
        (root / "rpcctl.toml").write_text(
            f'[app]\nname = "shop"\ncommand = [{command}]\nnode = "unix:run/shop.sock"\n'
        )
        self.node = f"unix:{root}/run/shop.sock"

    def __call__(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`bin/shop ARGS` typed in the release root."""
        clean = {k: v for k, v in os.environ.items() if not k.startswith(("RPCCTL_", "_RPCCTL"))}
        return subprocess.run(
            ["bin/shop", *args],
            cwd=self.root,
            env={**clean, **env},
            capture_output=True,
            text=True,
            timeout=DEADLINE * 3,
            check=False,
        )


@pytest.fixture
def shop(short_tmp: Path) -> Iterator[Launcher]:
    yield Launcher(short_tmp)


# -- 7. usage errors through bin/NAME name bin/NAME -------------------------------------------


def test_usage_errors_through_the_launcher_name_the_launcher(shop: Launcher) -> None:
    missing = shop("rpc")
    assert missing.returncode == 2
    assert missing.stderr.startswith("Usage: bin/shop rpc [OPTIONS] EXPR\n")
    assert "Try 'bin/shop rpc --help' for help." in missing.stderr
    unknown = shop("ping", "--bogus")
    assert unknown.returncode == 2
    assert unknown.stderr.startswith("Usage: bin/shop ping [OPTIONS]\n")
    assert "rpcctl" not in unknown.stderr


def test_usage_errors_of_plain_rpcctl_name_rpcctl(short_tmp: Path) -> None:
    from conftest import run_rpcctl

    result = run_rpcctl("rpc", cwd=short_tmp)
    assert result.returncode == 2
    assert result.stderr.startswith("Usage: rpcctl rpc [OPTIONS] EXPR\n")
