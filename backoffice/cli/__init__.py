"""Tooling: the ``signalhub`` command line, ``up`` (everything on one machine), the embedded Postgres and
Redis, and the local development settings. The only code that imports both servers; client commands
(``bridge``, ``producer``) import only their SDKs, so they run without the servers' dependencies."""

from backoffice.cli.commands import main

__all__ = ["main"]
