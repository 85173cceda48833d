"""The benchmark's quick mode runs end to end (its numbers are not checked here)."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT


def test_quick_benchmark_prints_every_row(tmp_path: object) -> None:
    out = ROOT / "bench" / ".quick-result.md"
    try:
        result = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        table = out.read_text()
    finally:
        out.unlink(missing_ok=True)
    assert table == result.stdout
    for row in (
        "rpcctl ping: wall / CPU / peak RSS",
        "rpcctl ping ÷ bare rpyc script",
        "rpcctl ping ÷ escript net_adm:ping",
        "rpcctl rpc (no-op task)",
        "client API call (no-op task), kept connection",
        "raw Python socket echo",
        "Erlang erpc:call",
        "ping --wait: agent listening → command returns",
        "ping --wait: CPU while waiting",
        "agent idle CPU",
        "resident memory the agent adds",
        "host CPU loop slowdown",
        "8 concurrent clients",
        "rpcctl ping of 5 agents",
        "job history: record_job() on the call's thread",
        "job history (sqlite): kept-connection no-op call",
        "profiler at 100 Hz: CPU-bound host loop slowdown",
        "profiler at 100 Hz: extra CPU per unit of the host's work",
        "mem --group-by line (8 frames): allocating host loop while traced",
        "mem --group-by traceback (32 frames): allocating host loop while traced",
        "mem --group-by line: memory while tracing",
        "mem on an app tracing 1 frame (PYTHONTRACEMALLOC=1): allocating host loop while traced",
        "long run: 500 calls on one connection + 20 short connections",
    ):
        assert row in table, row
