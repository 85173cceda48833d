"""Long runs and reloads leak nothing (issue #21): descriptors, threads and memory of the
agent's process stay flat over many calls and connections, and over gunicorn reloads,
whose workers inherit neither a listening agent nor a held lock."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import DEADLINE, ROOT, AppProcess, run_rpcctl, wait_until

LONGRUN = ROOT / "bench" / "longrun.py"  # the benchmark's long run (row 10)
MiB = 1 << 20


# -- 8. long runs leak nothing -----------------------------------------------------------------


def test_a_long_run_leaves_memory_descriptors_and_threads_flat(sample_app: AppProcess) -> None:
    """20,000 calls on one kept connection, then 300 short connections that each run a job:
    the agent's RSS grows by at most 8 MiB, and its descriptors and threads are back to
    what they were within 15 s (a resource bound, not a timing: the time is a deadline)."""
    out = subprocess.run(
        [sys.executable, str(LONGRUN), sample_app.node, str(sample_app.proc.pid), "sampleapp.echo"],
        capture_output=True,
        text=True,
        timeout=DEADLINE * 10,
        check=True,
    )
    found = json.loads(out.stdout)
    idle, after = found["idle"], found["after"]
    assert after["fds"] <= idle["fds"], found
    assert after["threads"] <= idle["threads"], found
    assert found["rss_growth"] <= 8 * MiB, found


# -- 7. fork safety under pre-fork servers -----------------------------------------------------

PREFORK = ROOT / "examples" / "preforkapp"
GUNICORN_CONF = """
import os

import app_agent
from preforkapp.gunicorn_hooks import on_exit, when_ready  # the agent in the arbiter

bind = os.environ["PREFORKAPP_BIND"]
workers = 3
preload_app = True


def post_worker_init(worker):
    # Each worker starts an agent of its own: it must have inherited no agent (start()
    # would raise) and no held lock (start() would hang).
    app_agent.start(node=f"unix:{os.environ['WORKER_AGENTS']}/{os.getpid()}.sock", app="worker")
"""


def children(pid: int) -> set[int]:
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry))
    return found


def descriptors(pid: int) -> list[str]:
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            found.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            continue  # closed meanwhile
    return found


def threads(pid: int) -> int:
    line = next(x for x in Path(f"/proc/{pid}/status").read_text().splitlines() if "Threads" in x)
    return int(line.split()[1])


def listening_inode(path: str) -> str:
    """The socket:[inode] of the UNIX socket listening at *path*."""
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 8 and fields[7] == path:
            return f"socket:[{fields[6]}]"
    raise AssertionError(f"nothing listens at {path}")


def test_gunicorn_reloads_leave_the_arbiter_flat_and_workers_clean(short_tmp: Path) -> None:
    """gunicorn --preload, 3 workers, 5 reloads (kill -HUP): the arbiter's descriptors and
    threads stay within 2 of where they were, its agent answers after each reload, and no
    worker holds the agent's listening socket; each worker starts an agent of its own."""
    node = f"unix:{short_tmp}/agent.sock"
    workers_dir = short_tmp / "workers"
    workers_dir.mkdir()
    conf = short_tmp / "gunicorn.conf.py"
    conf.write_text(GUNICORN_CONF)
    app = AppProcess(
        [sys.executable, "-m", "gunicorn", "-c", str(conf), "preforkapp.wsgi:app"],
        node=node,
        env={
            "PYTHONPATH": str(PREFORK),
            "PREFORKAPP_BIND": f"unix:{short_tmp}/http.sock",
            "WORKER_AGENTS": str(workers_dir),
        },
        cwd=PREFORK,
        ready_line=None,
    )
    master = app.proc.pid
    seen: list[tuple[int, int]] = []

    def workers_answer(expected: set[int]) -> bool:
        now = children(master)
        if len(now) != 3 or (expected and now & expected):
            return False
        return all(
            run_rpcctl("-n", f"unix:{workers_dir}/{w}.sock", "ping").returncode == 0 for w in now
        )

    try:
        assert run_rpcctl("-n", node, "ping", "--wait", str(DEADLINE)).returncode == 0
        wait_until(lambda: workers_answer(set()), what="three workers with their own agents")
        agent_socket = listening_inode(str(short_tmp / "agent.sock"))
        baseline = (len(descriptors(master)), threads(master))
        for _ in range(5):
            old = children(master)
            os.kill(master, signal.SIGHUP)
            wait_until(functools.partial(workers_answer, old), what="three new workers")
            assert run_rpcctl("-n", node, "ping").returncode == 0  # the arbiter's agent
            for worker in children(master):
                assert agent_socket not in descriptors(worker), f"worker {worker}"

            def flat() -> bool:
                seen.append((len(descriptors(master)), threads(master)))
                fds, count = seen[-1]
                return abs(fds - baseline[0]) <= 2 and abs(count - baseline[1]) <= 2

            wait_until(flat, what=f"the arbiter back to {baseline} (fds, threads): {seen[-3:]}")
        app.proc.send_signal(signal.SIGTERM)
        app.proc.wait(timeout=DEADLINE)
        assert not Path(node.removeprefix("unix:")).exists()
    finally:
        app.close()
