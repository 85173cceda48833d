"""Where code lives: a source file as the short path users read (``app/tasks.py``), for
stack, profile, mem and health alike. The bottom of the introspection modules: it imports
none of them."""

from __future__ import annotations

import sys


def short_path(filename: str, modules: dict[str, str] | None = None) -> str:
    """*filename* as its module's path (``app_agent/_jobs/table.py``) when a loaded module has that
    file, else relative to the longest ``sys.path`` entry that holds it, else as it is."""
    name = (modules if modules is not None else module_files()).get(filename)
    if name is not None:
        tail = "/__init__.py" if filename.endswith("__init__.py") else ".py"
        return name.replace(".", "/") + tail
    best = ""
    for entry in sys.path:
        if not entry:
            continue
        prefix = entry.rstrip("/") + "/"
        if filename.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return filename[len(best) :] if best else filename


def module_files() -> dict[str, str]:
    """Source file -> module name, for the loaded modules that have a ``.py`` file."""
    found = {}
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str) and path.endswith(".py") and name != "__main__":
            found[path] = name
    return found
