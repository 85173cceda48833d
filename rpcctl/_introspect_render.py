"""Human output of ``stack``, ``stats``, ``health``, ``mem`` and ``log-level``: plain text,
no colour.

Each function takes what the agent sent (plain data, see app_agent/_introspection/snapshot.py) and
returns text ending with a newline; ``--json`` prints that data as it came.
"""

from __future__ import annotations

import time
from typing import Any

from app_agent.wire.words import plural

# -- stack -------------------------------------------------------------------------------------


def stack(data: dict[str, Any], show_all: bool = False) -> str:
    """Threads like a Python traceback (innermost frame last), app threads first; the agent's
    idle threads folded into one line unless *show_all*."""
    threads = data["threads"]
    folded = [t for t in threads if t["idle"] and not show_all]
    fold_note = f", {plural(len(folded), 'idle agent thread')} folded (--all shows them)"
    lines = [
        f"Process {data['pid']} ({data['app']}), Python {data['python']}: "
        f"{plural(len(threads), 'thread')}" + (fold_note if folded else "")
    ]
    for thread in threads:
        if thread in folded:
            continue
        lines.append("")
        lines.append(_thread_header(thread))
        if thread["frames_cut"]:
            lines.append(f"  ... {thread['frames_cut']} outer frames cut")
        lines += _frames(thread["frames"])
    if folded:
        lines.append("")
        names: dict[str, int] = {}
        for t in folded:
            names[t["name"]] = names.get(t["name"], 0) + 1
        shown = ", ".join(f"{n} (x{c})" if c > 1 else n for n, c in names.items())
        lines.append(f"Idle agent threads: {shown}")
    tasks = data.get("asyncio")
    if tasks is not None:
        lines.append("")
        state = "running" if tasks["running"] else "not running"
        lines.append(f"asyncio tasks on the app's event loop ({state}): {len(tasks['tasks'])}")
        if tasks.get("error"):
            lines.append(f"  (could not list them: {tasks['error']})")
        for task in tasks["tasks"]:
            lines.append("")
            lines.append(f'Task "{task["name"]}" ({task["state"]}): {task["coroutine"]}')
            lines += _frames(task["frames"])
            if task["state"] == "running":
                lines.append("    (running now: the thread that runs the loop shows where)")
            if task.get("awaiting"):
                lines.append(f"    awaiting {task['awaiting']}")
    return "\n".join(lines) + "\n"


def _thread_header(thread: dict[str, Any]) -> str:
    notes = []
    if thread["main"]:
        notes.append("main")
    if thread["daemon"]:
        notes.append("daemon")
    if thread["agent"]:
        busy = thread.get("busy") or {}
        if "job" in busy:
            notes.append(f"agent, running job {busy['job']} {busy['task']}")
        elif "health_check" in busy:
            notes.append(f"agent, running health check {busy['health_check']}")
        else:
            notes.append("agent, idle")
    suffix = f" ({', '.join(notes)})" if notes else ""
    return f'Thread {thread["ident"]} "{thread["name"]}"{suffix}'


def _frames(frames: list[dict[str, Any]]) -> list[str]:
    lines = []
    for f in frames:
        lines.append(f'  File "{f["file"]}", line {f["line"]}, in {f["function"]}')
        if f.get("code"):
            lines.append(f"    {f['code']}")
    return lines


# -- stats -------------------------------------------------------------------------------------


def stats(data: dict[str, Any]) -> str:
    memory, cpu, fds, gc = data["memory"], data["cpu"], data["fds"], data["gc"]
    threads = data["threads"]
    python = data["python"]
    generations = ", ".join(
        f"gen{g['generation']} {g['count']} tracked / {plural(g['collections'], 'collection')}"
        for g in gc["generations"]
    )
    limit = f" (limit {fds['limit']})" if fds.get("limit") else ""
    os_threads = f" ({threads['os']} OS threads)" if threads.get("os") is not None else ""
    lines = [
        f"pid:       {data['pid']} ({data['app']})",
        f"uptime:    {duration(data['uptime_s'])} (agent {duration(data['agent_uptime_s'])})",
        f"memory:    RSS {size(memory['rss_bytes'])}, peak {size(memory['peak_rss_bytes'])}",
        f"cpu:       user {cpu['user_s']:.2f} s, system {cpu['system_s']:.2f} s",
        f"threads:   {threads['python']}{os_threads}",
        f"fds:       {fds['open'] if fds['open'] is not None else '?'} open{limit}",
        f"gc:        {generations}" + ("" if gc["enabled"] else " (disabled)"),
        f"python:    {python['version']} ({python['implementation']}) {python['executable']}",
        "packages:  " + ", ".join(f"{k} {v}" for k, v in data["packages"].items()),
    ]
    if "objects" in data:
        lines.append("objects (most common types the GC tracks):")
        width = max((len(str(o["count"])) for o in data["objects"]), default=1)
        lines += [f"  {o['count']:>{width}}  {o['type']}" for o in data["objects"]]
    return "\n".join(lines) + "\n"


def stats_line(data: dict[str, Any]) -> str:
    """One line per node, for fleets."""
    return (
        f"pid {data['pid']}, up {duration(data['uptime_s'])}, "
        f"RSS {size(data['memory']['rss_bytes'])}, "
        f"CPU {data['cpu']['user_s'] + data['cpu']['system_s']:.1f} s, "
        f"{plural(data['threads']['python'], 'thread')}, {data['fds']['open']} fds"
    )


def size(value: int | None) -> str:
    if value is None:
        return "?"
    return f"{value / (1 << 20):.1f} MiB"


def duration(seconds: float) -> str:
    seconds = int(seconds)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {secs:02d}s"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


# -- health ------------------------------------------------------------------------------------


def health(checks: list[dict[str, Any]]) -> str:
    """One line per check: ok/FAIL, name, time, message."""
    width = max((len(c["name"]) for c in checks), default=4)
    lines = []
    for c in checks:
        mark = "ok  " if c["ok"] else "FAIL"
        took = f"{c['duration_s'] * 1000:.0f} ms"
        message = c.get("message") or ""
        lines.append(f"{mark}  {c['name']:<{width}}  {took:>8}  {message}".rstrip())
    failed = [c["name"] for c in checks if not c["ok"]]
    if failed:
        lines.append(f"unhealthy: {len(failed)} of {plural(len(checks), 'check')} failed")
    else:
        lines.append(f"healthy: {plural(len(checks), 'check')} passed")
    return "\n".join(lines) + "\n"


def health_line(report: dict[str, Any]) -> str:
    return f"healthy: {plural(len(report['checks']), 'check')} passed"


# -- log levels --------------------------------------------------------------------------------


def log_levels(data: dict[str, Any]) -> str:
    loggers = data["loggers"]
    width = max(len(lg["logger"]) for lg in loggers)
    lines = []
    for lg in loggers:
        own = lg["level"]
        text = own if own == lg["effective"] else f"{own} (effective {lg['effective']})"
        if not lg.get("exists", True):
            text += " (no such logger yet)"
        if "reverts_to" in lg:
            text += f", back to {lg['reverts_to']} at {_clock(lg['reverts_at'])}"
        lines.append(f"{lg['logger']:<{width}}  {text}")
    return "\n".join(lines) + "\n"


def log_levels_line(data: dict[str, Any]) -> str:
    """One line per node, for fleets: ``root=INFO, sqlalchemy=WARNING``."""
    return ", ".join(f"{lg['logger']}={lg['level']}" for lg in data["loggers"])


def log_level_set(data: dict[str, Any]) -> str:
    text = f"{data['logger']}: {data['previous']} -> {data['level']}"
    if "reverts_to" in data:
        text += f" until {_clock(data['reverts_at'])}, then {data['reverts_to']}"
    return text + "\n"


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))


# -- mem ---------------------------------------------------------------------------------------


def mem(data: dict[str, Any]) -> str:
    """The sites that grew, largest first: size and block deltas, the app's file:line (and
    where inside a library the bytes were allocated), the code; then how it was traced."""
    grew, shown = data["grew"], len(data["top"])
    lines = [
        f"{grew} allocation site{'s' if grew != 1 else ''} grew in {data['seconds']:g} s "
        f"({signed_size(data['size_diff'])}, {data['count_diff']:+,} blocks in all); "
        + (f"the top {shown} by size, " if shown < grew else "")
        + f"grouped by {data['group_by']}"
    ]
    width = max((len(signed_size(e["size_diff"])) for e in data["top"]), default=0)
    for entry in data["top"]:
        where = entry["short"] if entry["line"] is None else f"{entry['short']}:{entry['line']}"
        if entry.get("via"):
            where += f" (via {entry['via']['short']}:{entry['via']['line']})"
        lines.append(
            f"  {signed_size(entry['size_diff']):>{width}}  {entry['count_diff']:>+8,} blocks"
            f"  {where}"
        )
        if data["group_by"] == "traceback":
            for frame in entry["traceback"]:
                lines.append(f"      {frame['short']}:{frame['line']}")
                if frame.get("code"):
                    lines.append(f"        {frame['code']}")
        elif entry.get("code"):
            lines.append(f"      {entry['code']}")
    lines.append(mem_tracing(data))
    return "\n".join(lines) + "\n"


def mem_tracing(data: dict[str, Any]) -> str:
    """How the diagnosis traced, and what it cost."""
    tracing, cost = data["tracing"], data["overhead"]
    frames = f"{tracing['frames']} frame{'s' if tracing['frames'] != 1 else ''}"
    if tracing["already"]:
        how = (
            f"the app was already tracing (PYTHONTRACEMALLOC or its own tracemalloc.start(), "
            f"{frames}): its traces were compared and tracing left on"
        )
    else:
        how = f"started for this run with {frames} and stopped after"
    return (
        f"tracing: {how}; tracemalloc held {size(cost['tracemalloc_bytes'])}, "
        f"RSS {size(cost['rss_before_bytes'])} -> {size(cost['rss_during_bytes'])}, "
        f"snapshots took {cost['snapshots_s'] * 1000:.0f} ms"
    )


def signed_size(value: int) -> str:
    """``+8.8 MiB``, ``-512 B``: a size change in the largest unit that keeps it above 1."""
    sign = "-" if value < 0 else "+"
    amount = float(abs(value))
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{sign}{amount:.0f} {unit}" if unit == "B" else f"{sign}{amount:.1f} {unit}"
        amount /= 1024
    return f"{sign}{amount:.1f} GiB"
