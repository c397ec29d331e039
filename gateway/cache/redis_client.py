"""redis-py clients for the URL forms the gateway accepts: single node (``redis://``,
``rediss://``, redis-py's own), Sentinel and Cluster (``redis+sentinel://``,
``redis+cluster://``, and ``rediss+`` for TLS), as ``gateway.redis_url`` parses and documents
them; redis-py's query options pass through as keyword arguments.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as redis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel

# The URL parsing lives in gateway.redis_url, which the configuration checks URLs with.
from gateway.redis_url import RedisTarget, parse_redis_url, redact_url

__all__ = ["RedisTarget", "make_client", "parse_redis_url", "redact_url"]


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
