"""Acceptance: one tile, four protocols, one upstream call."""

from __future__ import annotations

from tests.conftest import MakeGateway
from tests.integration.conftest import FakeUpstream


async def test_xyz_wmts_kvp_wmts_rest_and_ogc_api_share_one_cache_entry(
    make_gateway: MakeGateway, fake_upstream: FakeUpstream
) -> None:
    client = await make_gateway({"fake": {"url": fake_upstream.url, "formats": ["png"]}})
    # XYZ z/x/y = WMTS TileMatrix/TileCol/TileRow = OGC API tileMatrix/tileCol/tileRow.
    z, x, y = 5, 17, 11
    paths = [
        f"/tiles/fake/{z}/{x}/{y}.png",
        f"/wmts?service=WMTS&request=GetTile&version=1.0.0&layer=fake&style=default"
        f"&format=image/png&tilematrixset=WebMercatorQuad&tilematrix={z}&tilerow={y}&tilecol={x}",
        f"/wmts/1.0.0/fake/default/WebMercatorQuad/{z}/{y}/{x}.png",
        f"/ogcapi/collections/fake/map/tiles/WebMercatorQuad/{z}/{y}/{x}?f=png",
    ]
    answers = [await client.get(path) for path in paths]
    assert [a.status for a in answers] == [200] * 4
    assert [a.headers["X-Cache"] for a in answers] == ["MISS", "HIT", "HIT", "HIT"]
    assert len({a.headers["ETag"] for a in answers}) == 1
    assert len({await a.read() for a in answers}) == 1
    assert len(fake_upstream.queries) == 1
