"""Pick and build the job store named by a URL (config key ``jobs.store``)."""

from __future__ import annotations

import os
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from fanout.jobs.memory_store import MemoryStore
from fanout.jobs.sqlite_store import SqliteStore
from fanout.jobs.store import JobStore

_SQLITE_PREFIX = "sqlite:///"


def sqlite_path(url: str) -> str:
    """The file path of a ``sqlite:///`` URL, following SQLAlchemy's convention.

    Everything after the third slash is the path, taken literally (no
    percent-decoding): ``sqlite:///var/jobs.db`` is ``var/jobs.db`` relative to
    the working directory, ``sqlite:////var/lib/fanout/jobs.db`` (four slashes)
    is the absolute ``/var/lib/fanout/jobs.db``. An in-memory database
    (``sqlite://``, ``sqlite:///:memory:``) is refused: it could not be shared
    by the workers; use ``memory://``.
    """
    if url[: len(_SQLITE_PREFIX)].lower() != _SQLITE_PREFIX:
        raise ValueError(f"job store url {url!r}: expected sqlite:///<path>")
    path = url[len(_SQLITE_PREFIX) :]
    if not path or path == ":memory:":
        raise ValueError(f"job store url {url!r}: a file path is required (or use memory://)")
    if "?" in path or "#" in path:
        raise ValueError(f"job store url {url!r}: query and fragment are not supported")
    return path


def anchored_store_url(url: str, directory: str) -> str:
    """``url`` with a relative ``sqlite:///`` path taken from ``directory`` (made absolute).

    The gateway file's store then does not depend on where the server was
    started. Any other URL, and an absolute sqlite path, is returned as is.
    """
    if url[: len(_SQLITE_PREFIX)].lower() != _SQLITE_PREFIX:
        return url
    path = url[len(_SQLITE_PREFIX) :]
    if not path or path == ":memory:" or os.path.isabs(path):
        # Refused or kept by open_store_from_url as it is.
        return url
    return _SQLITE_PREFIX + os.path.join(os.path.abspath(directory), path)


def job_store_url(setting: str, in_file: str, config_path: str) -> str:
    """The job store to open: the JOB_STORE setting, else the gateway file's (anchored to it)."""
    # A relative sqlite path in the gateway file is taken from the file's directory.
    return setting or anchored_store_url(in_file, os.path.dirname(config_path))


def open_store_from_url(url: str) -> JobStore:
    """Build (not open) the store for ``url``: memory://, sqlite:///<path> or redis://...

    ``redis://host:port/db?prefix=name:`` keeps the store's keys under that prefix
    (default ``fanout:``).

    The caller opens it (``await store.open()``) on the loop that will use it.
    """
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        if url.lower() not in ("memory://", "memory:"):
            raise ValueError(f"job store url {url!r}: memory:// takes no location")
        return MemoryStore()
    if scheme == "sqlite":
        return SqliteStore(sqlite_path(url))
    if scheme in ("redis", "rediss"):
        # Imported only when asked for: the redis client is an optional extra.
        from fanout.jobs.redis_store import RedisStore  # type: ignore[import-not-found, unused-ignore]

        # ?prefix=<text> namespaces the keys (several gateways, or tests, on one server).
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
        prefixes = [value for name, value in query if name == "prefix"]
        rest = urlencode([(name, value) for name, value in query if name != "prefix"])
        plain = urlunsplit(parts._replace(query=rest))
        store: JobStore = RedisStore(plain, prefix=prefixes[-1]) if prefixes else RedisStore(plain)
        return store
    raise ValueError(
        f"job store url {url!r}: unknown scheme {scheme!r} "
        "(expected memory://, sqlite:///<path> or redis://...)"
    )
