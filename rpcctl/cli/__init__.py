"""The click CLI: parse options, call the client, render results, map errors to exit codes.

Results go to stdout; diagnostics go to stderr. Every failure is an RpcctlError whose
``exit_code`` is the documented one (see the README's table). One module per command group,
each imported only when one of its commands runs (``cli.lazy`` in ``_group``):

- ``_group``: the ``rpcctl`` group, its global options, ``main()``
- ``_common``: settings, options, JSON output, error reporting
- ``_fleet_table``: a fleet's results as a table and one exit code
- ``status``: ``ping``, ``tasks``, ``info``
- ``calls``: ``rpc``, ``jobs``, ``logs``, ``wait``, ``cancel``
- ``release``: ``start``, ``stop``, ``restart``, ``pid``, ``release init``, ``cookie``
- ``introspect``: ``stack``, ``stats``, ``health``, ``profile``, ``log-level``
- ``drain``: ``drain``, ``resume`` (readiness for deploys)
- ``eval``: ``eval`` (a task in a fresh process); ``remote``: ``remote`` (a console in the app)
- ``history``: ``history`` (finished jobs from the durable store, one node or a fleet)
- ``top``: ``top`` (the live view; Textual, from the extra ``rpcctl[top]``)
"""

from __future__ import annotations

from rpcctl.cli._group import cli, main

__all__ = ["cli", "main"]
