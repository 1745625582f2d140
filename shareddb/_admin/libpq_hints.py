"""libpq's connection errors in plain words, each with the fix (for ``shareddb doctor``)."""

from __future__ import annotations

import psycopg

from shareddb._core.url import DbTarget

_LIBPQ_HINTS: tuple[tuple[str, str, str], ...] = (
    (
        "connection refused",
        "nothing accepts connections at that host and port",
        "start the server, or fix the host/port in the url (the default port is 5432)",
    ),
    (
        "no such file or directory",
        "there is no server socket at that path",
        "start the server, or give host= the folder its socket is in",
    ),
    (
        "password authentication failed",
        "the server rejected the password",
        "fix the password in the url, or the role's password on the server",
    ),
    (
        "no password supplied",
        "the server wants a password and the url has none",
        "add it: postgresql://user:PASSWORD@host/db, or use a ~/.pgpass file",
    ),
    (
        "no pg_hba.conf entry",
        "the server's pg_hba.conf does not let this user connect from this host",
        "add a matching line to pg_hba.conf on the server and reload it",
    ),
    (
        "does not exist",
        "the server runs but the role or database named in the url does not exist",
        "create it (createdb NAME / createuser NAME) or fix the name in the url",
    ),
    (
        "could not translate host name",
        "the host name does not resolve",
        "fix the host name in the url",
    ),
    (
        "failed to resolve host",
        "the host name does not resolve",
        "fix the host name in the url",
    ),
    (
        "timeout expired",
        "the server did not answer in time",
        "check the host and port, a firewall in between, or raise --timeout",
    ),
    (
        "too many connections",
        "the server has no free connection slots",
        "close idle clients or raise max_connections on the server",
    ),
    (
        "ssl",
        "the SSL negotiation failed",
        "set sslmode= in the url to what the server supports",
    ),
)


def explain_libpq(message: str, target: DbTarget) -> tuple[str, str]:
    """libpq's error in plain words (naming the server, password masked), and the fix."""
    params = psycopg.conninfo.conninfo_to_dict(target.conninfo)
    host = str(params.get("host") or "the local socket")
    port = str(params.get("port") or "5432")
    where = f"{target.masked} (host {host}, port {port})"
    libpq = target.scrub(" ".join(message.split()))
    for prefix in ("connection failed: ", "connection is bad: "):
        libpq = libpq.removeprefix(prefix)
    lowered = libpq.lower()
    for needle, plain, fix in _LIBPQ_HINTS:
        if needle in lowered:
            return f"can't connect to {where}: {plain} (libpq said: {libpq})", fix
    return (
        f"can't connect to {where} (libpq said: {libpq})",
        "check the url, that the server runs, and that it accepts this client",
    )
