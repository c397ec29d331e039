"""redis-py clients for the URL forms the gateway accepts: single node, Sentinel, Cluster.

``redis://`` and ``rediss://`` are redis-py's own forms (``redis.from_url``); Sentinel and
Cluster, which redis-py has no URL for, are spelled as Redis' other clients spell them::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/<service name>[/<db>]
    redis+cluster://[[user]:password@]host:port[,host:port...]

with ``rediss+`` for TLS. Query options of redis-py (``ssl_ca_certs``, ``ssl_cert_reqs``...)
pass through as keyword arguments.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel


def redact_url(url: str) -> str:
    """``url`` with any password replaced by ``***``, for logs and status pages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    credentials, _, host = rest.rpartition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}" if ":" in credentials else f"{scheme}://***@{host}"


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


def parse_redis_url(url: str) -> RedisTarget:
    """Parse a Sentinel or Cluster URL (see module docstring).

    Raises ``ValueError`` for a malformed URL.
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
        if not colon or not host or not port.isdigit():
            raise ValueError(f"{part!r} is not host:port")
        hosts.append((host.strip("[]"), int(port)))
    segments = [unquote(s) for s in path.split("/") if s]
    service, db = None, 0
    if kind == "sentinel":
        if not segments:
            raise ValueError("a Sentinel URL names its service: redis+sentinel://h:p/<service>")
        service = segments[0]
        if len(segments) > 1:
            if not segments[1].isdigit():
                raise ValueError("the database after the service must be a number")
            db = int(segments[1])
    elif segments:
        raise ValueError("a Cluster URL has no path (Cluster has only database 0)")
    options: dict[str, Any] = dict(parse_qsl(query))
    return RedisTarget(kind, transport == "rediss", username, password, hosts, service, db, options)


def make_client(url: str, timeout: float, max_connections: int = 100) -> redis.Redis | RedisCluster:
    """A redis-py asyncio client for ``url`` with ``timeout`` seconds for connects and replies.

    A single node gets a blocking pool of ``max_connections``: a burst larger than the pool
    waits up to ``timeout`` for a connection, where redis-py's default pool fails at once
    (which would read as an outage and make every waiter fetch for itself).
    Raises ``ValueError`` for a malformed URL.
    """
    common: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
    if "+" not in url.partition("://")[0]:
        pool = redis.BlockingConnectionPool.from_url(
            url, max_connections=max_connections, timeout=timeout, **common
        )
        return redis.Redis(connection_pool=pool)
    target = parse_redis_url(url)
    auth = {"username": target.username, "password": target.password}
    tls = {"ssl": True} if target.tls else {}
    if target.kind == "cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in target.hosts],
            **auth,
            **tls,
            **common,
            **target.options,
        )
    sentinel = Sentinel(
        target.hosts,
        sentinel_kwargs={**tls, **common},
        **auth,
        **tls,
        **common,
        **target.options,
    )
    assert target.service is not None  # parse_redis_url guarantees it for Sentinel
    return sentinel.master_for(target.service, db=target.db)
