"""The cache's key layout, in one place: nobody else formats a key (architecture.md).

Every key starts with the configured prefix:

    <prefix>:<layer>:<generation>[+<variant>]:<tms>:<z>:<x>:<y>:<scale>.<ext>   a tile
    <prefix>:lock:<layer>:<generation>[+<variant>]:<tms>:<z>:<col0>:<row0>:<scale>.<ext>
                                          a metatile's lock
    <prefix>:purge:generation:<layer>     whole-layer purges of the layer (a counter)
    <prefix>:purge:seq                    every purge (a counter)
    <prefix>:purge:log                    the last partial purges (a list of JSON events)
    <prefix>:_proxy:<path>:<service path>:<read>           a cacheable read of the reverse proxy
    <prefix>:lock:_proxy:<path>:<service path>:<read>      its coalescing lock
    <prefix>:_job:<jobId>                 a GP job's record (owner, upstream, digest, times)
    <prefix>:_job:<jobId>:status          its last status seen upstream, with a version
    <prefix>:lock:_job:<jobId>            the lease of its one poller
    <prefix>:_layers                      published layers (a hash: name -> JSON)
    <prefix>:_layers:seq                  every change of them (a counter replicas poll)

``<read>`` is ``tile:<level>:<row>:<col>[:<digest>]`` or ``export:<digest>``, the digest
(made by the proxy) of the normalised parameters without the token. ``_proxy`` cannot be a
layer name (layer names start with a letter or digit), so a purge of a layer never reaches
proxy entries; nor does it reach ``_job`` entries. ``<jobId>`` is the upstream's job id,
letters, digits, ``_`` and ``-`` only (checked by the jobs relay).

``<variant>`` is the normalised token of a style and time other than the layer's default
(``s=<style>``, ``t=<epoch ms>[_<epoch ms>]``, joined by ``,``; ``tiles.variants``): absent
for the default, so a layer's default tiles keep the keys they had before variants.
``generation`` is the layer's fingerprint and purge count, so a change of what the upstream is
asked for, or a purge, never serves the old bytes. A key holds no token and no client identity.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KeyLayout:
    """The keys under ``prefix`` (``cache.prefix`` of the config)."""

    prefix: str

    def tile(
        self,
        layer: str,
        generation: str,
        tms: str,
        z: int,
        x: int,
        y: int,
        scale: int,
        ext: str,
        variant: str = "",
    ) -> str:
        """A tile's key: TileMatrixSet ``tms`` (a base set, never a ``_2x`` one), TileMatrix
        ``z``, TileCol ``x``, TileRow ``y``, ``scale`` 1 or 2, extension ``ext`` and the
        ``variant`` token (empty for the layer's default)."""
        if variant:
            generation = f"{generation}+{variant}"
        return f"{self.prefix}:{layer}:{generation}:{tms}:{z}:{x}:{y}:{scale}.{ext}"

    def lock(
        self,
        layer: str,
        generation: str,
        tms: str,
        z: int,
        col0: int,
        row0: int,
        scale: int,
        ext: str,
        variant: str = "",
    ) -> str:
        """The coalescing lock of the metatile whose first tile is TileCol ``col0``, TileRow
        ``row0`` of TileMatrix ``z``, in ``variant`` (see ``tile``)."""
        if variant:
            generation = f"{generation}+{variant}"
        return f"{self.prefix}:lock:{layer}:{generation}:{tms}:{z}:{col0}:{row0}:{scale}.{ext}"

    def proxy(self, path: str, service: str, read: str) -> str:
        """A cacheable read of the reverse proxy: upstream ``path`` (``proxy.services[].path``,
        ``"-"`` for the empty one), ``service`` path below it with ``/`` as ``:`` (for example
        ``rgb:ImageServer``) and ``read`` (see the module docstring). The parts hold no token."""
        return f"{self.prefix}:_proxy:{path}:{service}:{read}"

    def proxy_lock(self, path: str, service: str, read: str) -> str:
        """The coalescing lock of the proxy read ``proxy(path, service, read)``."""
        return f"{self.prefix}:lock:_proxy:{path}:{service}:{read}"

    def layer_tiles(self, layer: str) -> str:
        """The start shared by every tile key of ``layer``, whatever its generation."""
        return f"{self.prefix}:{layer}:"

    def generation(self, layer: str) -> str:
        """The counter of whole-layer purges of ``layer``."""
        return f"{self.prefix}:purge:generation:{layer}"

    @property
    def purge_seq(self) -> str:
        """The counter of every purge, which replicas poll."""
        return f"{self.prefix}:purge:seq"

    @property
    def purge_log(self) -> str:
        """The list of the last partial purges (JSON events, newest first)."""
        return f"{self.prefix}:purge:log"

    def job(self, job_id: str) -> str:
        """The record of GP job ``job_id`` (the upstream's id)."""
        return f"{self.prefix}:_job:{job_id}"

    def job_status(self, job_id: str) -> str:
        """The last status of GP job ``job_id`` seen upstream, with its version."""
        return f"{self.prefix}:_job:{job_id}:status"

    def job_lease(self, job_id: str) -> str:
        """The lease of the one replica polling GP job ``job_id`` upstream."""
        return f"{self.prefix}:lock:_job:{job_id}"

    @property
    def published_layers(self) -> str:
        """The hash of published layers (layer name -> its JSON description)."""
        return f"{self.prefix}:_layers"

    @property
    def published_seq(self) -> str:
        """The counter of changes to the published layers, which replicas poll."""
        return f"{self.prefix}:_layers:seq"
