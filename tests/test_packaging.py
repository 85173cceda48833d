"""rpcctl as a user installs it: an sdist and a wheel built from a checkout, the wheel
installed into a fresh virtual environment, its rpcctl talking to a real agent."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

from app_agent._version import __version__
from conftest import DEADLINE, ROOT, AppProcess

BUILD_TIMEOUT = DEADLINE * 15  # an isolated build environment, from pip's cache


def run(*argv: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(a) for a in argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_build_install_and_run(tmp_path: Path, sample_app: AppProcess) -> None:
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT,
        checkout,
        ignore=shutil.ignore_patterns(
            ".git", ".venv*", "build", "dist", "*.egg-info", "__pycache__", "run", "var", "*.db"
        ),
    )
    # `python -m build`, as the README says: the sdist, then the wheel built from it.
    run(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", checkout)
    sdist = tmp_path / "dist" / f"rpcctl-{__version__}.tar.gz"
    wheel = tmp_path / "dist" / f"rpcctl-{__version__}-py3-none-any.whl"

    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    for needed in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "docs/jobs.md",
        "rpcctl/py.typed",
        "app_agent/py.typed",
        "app_agent/contrib/alembic.py",
    ):
        assert needed in in_sdist, needed
    assert not any(name.startswith("tests/") for name in in_sdist)  # all or nothing: nothing

    with zipfile.ZipFile(wheel) as archive:
        in_wheel = set(archive.namelist())
        entry_points = archive.read(f"rpcctl-{__version__}.dist-info/entry_points.txt").decode()
    assert {"rpcctl/py.typed", "app_agent/py.typed", "rpcctl/cli/__init__.py"} <= in_wheel
    # The command is the standard entry point, and the only script the wheel installs.
    assert entry_points.split() == ["[console_scripts]", "rpcctl", "=", "rpcctl.__main__:main"]
    assert not [name for name in in_wheel if ".data/scripts/" in name]

    # A fresh environment that sees nothing of this one's packages.
    fresh = tmp_path / "fresh"
    venv.create(fresh, with_pip=True, system_site_packages=False)
    run(fresh / "bin" / "python", "-m", "pip", "install", "--quiet", wheel)
    rpcctl = fresh / "bin" / "rpcctl"
    where = run(
        fresh / "bin" / "python", "-c", "import rpcctl; print(rpcctl.__file__)", cwd=tmp_path
    )
    assert where.stdout.startswith(str(fresh))
    assert run(rpcctl, "--version", cwd=tmp_path).stdout == f"rpcctl, version {__version__}\n"
    assert run(rpcctl, "-n", sample_app.node, "ping", cwd=tmp_path).stdout == "pong\n"
    called = run(rpcctl, "-n", sample_app.node, "rpc", "add(1, 2)", cwd=tmp_path)
    assert called.stdout == "3\n"

    # `pip install .` in a checkout, the README's other way.
    pip = (fresh / "bin" / "python", "-m", "pip", "install", "--quiet")
    run(*pip, "--force-reinstall", "--no-deps", ".", cwd=checkout)
    assert run(rpcctl, "-n", sample_app.node, "ping", cwd=tmp_path).stdout == "pong\n"
