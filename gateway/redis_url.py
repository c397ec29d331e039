"""The Redis URL forms the gateway accepts, parsed without connecting: single node, Sentinel,
Cluster. Pure parsing, so the configuration can check a URL as the cache will read it.

``redis://`` and ``rediss://`` are redis-py's own forms (``redis.from_url``); Sentinel and
Cluster, which redis-py has no URL for, are spelled as Redis' other clients spell them::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/<service name>[/<db>]
    redis+cluster://[[user]:password@]host:port[,host:port...]

with ``rediss+`` for TLS. Query options of redis-py (``ssl_ca_certs``, ``ssl_cert_reqs``...)
pass through as keyword arguments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from redis.asyncio.connection import parse_url


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL: ``kind`` (``single``, ``sentinel``, ``cluster``), TLS, credentials,
    ``hosts`` as ``(host, port)``, the Sentinel ``service``, ``db`` and extra options."""

    kind: str
    tls: bool
    username: str | None
    password: str | None
    hosts: list[tuple[str, int]]
    service: str | None = None
    db: int = 0
    options: dict[str, Any] = field(default_factory=dict)


def _port(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Sentinel or Cluster URL (see module docstring).

    Raises ``ValueError`` for a malformed URL, a port outside 1-65535 or a database that is not
    a whole number.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or "+" not in scheme:
        raise ValueError("not a redis+sentinel:// or redis+cluster:// URL")
    transport, kind = scheme.split("+", 1)
    if transport not in ("redis", "rediss") or kind not in ("sentinel", "cluster"):
        raise ValueError(f"unknown scheme {scheme!r}")
    rest, _, query = rest.partition("?")
    credentials, at, rest = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = credentials.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    netloc, _, path = rest.partition("/")
    hosts = []
    for part in netloc.split(","):
        host, colon, port = part.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{part!r} is not host:port")
        hosts.append((host.strip("[]"), _port(port)))
    segments = [unquote(s) for s in path.split("/") if s]
    service, db = None, 0
    if kind == "sentinel":
        if not segments:
            raise ValueError("a Sentinel URL names its service: redis+sentinel://h:p/<service>")
        service = segments[0]
        if len(segments) > 1:
            if not re.fullmatch(r"[0-9]+", segments[1]):
                raise ValueError("the database after the service must be a number")
            db = int(segments[1])
    elif segments:
        raise ValueError("a Cluster URL has no path (Cluster has only database 0)")
    options: dict[str, Any] = dict(parse_qsl(query))
    return RedisTarget(kind, transport == "rediss", username, password, hosts, service, db, options)


def check_redis_url(url: str) -> None:
    """Check ``url`` in any accepted form as the cache will read it, without connecting.

    Raises ``ValueError`` naming what is wrong (never repeating the URL, which may hold a
    password): a port outside 1-65535, a database that is not a whole number (redis-py would
    silently use 0), a query option redis-py cannot read, or a malformed Sentinel/Cluster URL.
    A ``port`` in the query is checked like the URL's own: redis-py passes it on as text,
    which fails only when the cache connects.
    """
    for name, value in parse_qsl(url.partition("?")[2]):
        if name == "port":
            _port(value)
    if "+" in url.partition("://")[0]:
        parse_redis_url(url)
        return
    parts = urlsplit(url)
    hostport = parts.netloc.rpartition("@")[2]
    # An IPv6 address is bracketed: its own colons are not the port's.
    if ":" in hostport.rpartition("]")[2]:
        _port(hostport.rpartition(":")[2])
    path = unquote(parts.path).strip("/")
    if path and not re.fullmatch(r"[0-9]+", path):
        raise ValueError(f"the database {path!r} (the URL's path) is not a whole number")
    if parse_url(url).get("db", 0) < 0:
        raise ValueError("the database number must not be negative")


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and status pages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"
