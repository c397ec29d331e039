"""Property-based fuzzing (hypothesis) of every route group of the gateway, served as
``tile-gateway serve`` serves it (``server.start_site``) on a real socket, with a real Redis and
the reference ImageServer as its upstream.

Each generated request (method, request target, headers, body) goes over a raw socket, so bytes
a client library would refuse to send (outside UTF-8 in a header, percent-encoded garbage,
numbers of thousands of digits) reach the server as sent. For every answer:

- the status is below 500 (but for the 501 OperationNotSupported that WMTS prescribes for
  GetFeatureInfo, an operation the service does not offer: counted apart);
- the body is in the front's own format: the gateway's JSON error (``/tiles``, ``/ogcapi``,
  ``/admin``, the root) or an OWS ExceptionReport (``/wmts``) for 4xx; for 2xx/3xx an image
  that decodes, a JSON or XML document that parses, or one of the viewer's files;
- no log record at ERROR or with a traceback, and no control character in any log line.

Only requests aiohttp's parser refuses before the gateway sees them (a header aiohttp does not
allow twice, a line beyond 8,190 bytes) are answered by aiohttp itself, as text: they are
counted and printed, and their log line is checked like any other.

``FUZZ_EXAMPLES`` sets the number of requests per route group (default 200, about 30 s in all
on two shared cores); hypothesis runs derandomized without its example database, so a run is
repeatable.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gzip
import http.client
import io
import json
import logging
import os
import socket
import threading
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any
from urllib.parse import quote, quote_from_bytes, unquote

import pytest
from aiohttp.http_parser import SINGLETON_HEADERS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lxml import etree
from PIL import Image

from gateway.app import create_app
from gateway.server import start_site
from tests.conftest import gateway_config

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "200"))
TOKEN = "fuzz-admin-token"
OWS = "{http://www.opengis.net/ows/1.1}"
# aiohttp's limit on the request line and on each header line.
MAX_LINE = 8190
GROUPS = ("tiles", "wmts", "ogcapi", "admin", "root")
FUZZ = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    # One gateway (module scope) and caplog serve every example: nothing to reset between them.
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)

LAYERS = ("bluemarble", "rgb", "dtm", "nosuch")
# Path segments of the elevation tiles, /tiles/<layer>/<encoding>/<z>/<x>/<y>.png.
ENCODINGS = ("terrarium", "terrain-rgb")
TMS_IDS = ("WebMercatorQuad", "WebMercatorQuad_2x", "WorldCRS84Quad", "WGS1984Quad", "Nope")
# Style and time values: the rgb layer's, the keywords, and what no layer offers.
VARIANT_VALUES = ("natural", "swapped", "nope", "2010-06-29", "2020-08-31T00:00:00Z", "2015/2010")
# Header values: what a field value may hold (RFC 9110 section 5.5: VCHAR, SP, HTAB and
# obs-text, the bytes 0x80-0xFF that need not be UTF-8).
VALUE_BYTES = (9, *range(32, 127), *range(128, 256))
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
# Headers that frame the message: generated, they would desynchronise the connection.
FRAMING = {b"content-length", b"transfer-encoding", b"connection", b"upgrade", b"expect"}


@dataclass(frozen=True)
class Request:
    """One generated request: what goes on the wire, and the front that answers it."""

    method: bytes
    target: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes | None
    front: str


# -- building blocks -------------------------------------------------------------------------

# Numbers for any place; thousands of digits only where a tile address has its numbers (two
# of them would pass aiohttp's 8,190-byte request line, and the parser would refuse it).
small_numbers = st.one_of(
    st.integers(0, 40).map(str),
    st.integers(-5, 2**70).map(str),
    st.sampled_from(
        ["²", "\u0661", "0x1", "1e3", "+1", "-0", " 1", "0" * 20 + "1", "1.5", "", "-1"]
    ),
)
numbers = st.one_of(
    st.integers(0, 4).map(str), small_numbers, st.integers(4290, 4400).map(lambda n: "9" * n)
)
# As they go in a path: percent-encoded ("²" is %C2%B2).
url_numbers = numbers.map(lambda n: quote(n, safe="+-"))
tile_names = st.builds(
    lambda n, retina, ext: f"{n}{retina}{ext}",
    small_numbers,
    st.sampled_from(["", "", "@2x", "@3x", "@"]),
    st.sampled_from([".png", ".jpg", ".jpeg", ".PNG", ".gif", ".", "", ".png.png"]),
)
garbage = st.one_of(st.text(max_size=16), st.binary(max_size=12))


@st.composite
def segment(draw: st.DrawFn, tokens: tuple[str, ...]) -> str:
    """One path segment, percent-encoded as drawn: every byte, or leaving sub-delims or a
    stray ``%`` (a broken escape such as ``%ZZ``) as they are."""
    value = draw(st.one_of(st.sampled_from(tokens), small_numbers, tile_names, garbage))
    data = value.encode() if isinstance(value, str) else value
    encoded = quote_from_bytes(data, safe=draw(st.sampled_from(["", "@:!$&'()*+,;=", "%"])))
    # Dot segments would move the path to another front (RFC 3986 section 5.2.4).
    return "x" if unquote(encoded) in (".", "..") else encoded


def path_of(prefix: str, tokens: tuple[str, ...], most: int = 7) -> st.SearchStrategy[str]:
    """``prefix`` and up to ``most`` segments of ``tokens``, numbers, tile names, garbage."""
    return st.lists(segment(tokens), max_size=most).map(lambda parts: prefix + "/".join(parts))


@st.composite
def query(draw: st.DrawFn, names: tuple[str, ...], values: tuple[str, ...]) -> str:
    """A query string: known and unknown names in any case, repeated or not, with known values,
    numbers and garbage; sometimes a name without ``=`` or an empty pair."""
    name = st.one_of(
        st.tuples(
            st.sampled_from(names), st.sampled_from([str, str.lower, str.upper, str.swapcase])
        ).map(lambda pair: pair[1](pair[0])),
        garbage.map(lambda g: g if isinstance(g, str) else g.decode("latin-1")),
    )
    value = st.one_of(st.sampled_from(values), small_numbers, garbage)
    pairs = []
    for _ in range(draw(st.integers(0, 10))):
        key = draw(name)
        item = draw(value)
        raw = item.encode() if isinstance(item, str) else item
        safe = draw(st.sampled_from(["", "/,:", "%"]))
        key_text = quote_from_bytes(key.encode(), safe=safe)
        form = draw(st.sampled_from(["pair", "pair", "pair", "bare", "empty"]))
        if form == "bare":
            pairs.append(key_text)
        elif form == "empty":
            pairs.append("")
        else:
            pairs.append(f"{key_text}={quote_from_bytes(raw, safe=safe)}")
    return "&".join(pairs)


header_values = st.lists(st.sampled_from(VALUE_BYTES), max_size=40).map(bytes)
http_dates = st.one_of(
    st.integers(-(10**10), 10**11).map(lambda t: formatdate(t, usegmt=True).encode()),
    st.sampled_from([b"Mon, 99 Foo 99999 99:99:99 GMT", b"yesterday", b"0", b""]),
)


def header_strategy(port_host: bytes) -> st.SearchStrategy[tuple[bytes, bytes]]:
    """One header: a known one with good and bad values, or any name with any value."""
    known: dict[bytes, st.SearchStrategy[bytes]] = {
        b"Host": st.sampled_from(
            [port_host, b"localhost", b"[::1]:80", b"caf\xe9.example", b"\xff", b"a b", b"x/y?z"]
        ),
        b"X-Forwarded-Host": st.sampled_from([b"maps.example.org", b"\xff\xfe", b"a b, c"]),
        b"X-Forwarded-Proto": st.sampled_from([b"https", b"http", b"HTTPS", b"gopher", b"\xe9"]),
        b"X-Forwarded-Prefix": st.sampled_from([b"/gw", b"gw/", b"/a b", b"/\xff", b"//", b","]),
        b"Accept": st.sampled_from(
            [
                b"image/png",
                b"image/jpeg;q=0.5, image/png;q=0.1",
                b"application/json",
                b"application/xml",
                b"text/html;q=0",
                b"*/*;q=0",
                b"image/*;q=nan",
                b"a/b;q=1e999",
                b";;;,,,",
            ]
        ),
        b"Accept-Encoding": st.sampled_from([b"gzip", b"gzip;q=0", b"br", b"*", b"gzip;q=x"]),
        b"If-None-Match": st.sampled_from([b'"abc"', b"*", b'W/"x"', b'"', b"a, b", b'"\xff"']),
        b"If-Modified-Since": http_dates,
        b"Range": st.sampled_from([b"bytes=0-10", b"bytes=-5", b"bytes=9-1", b"lines=1"]),
        b"Origin": st.sampled_from([b"https://app.example", b"null", b"\xff"]),
        b"Access-Control-Request-Method": st.sampled_from([b"GET", b"POST", b"\xff"]),
        b"Access-Control-Request-Headers": st.sampled_from([b"authorization", b"x, y"]),
        b"Authorization": st.sampled_from(
            [b"Bearer " + TOKEN.encode(), b"Bearer wrong", b"Basic Zm9vOmJhcg==", b"Bearer", b""]
        ),
        b"Content-Type": st.sampled_from(
            [b"application/json", b"application/json; charset=nope", b"text/plain", b"x"]
        ),
        b"Content-Encoding": st.sampled_from([b"gzip", b"deflate", b"br", b"zstd", b"x", b""]),
    }
    any_name = st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=20).map(str.encode)
    return st.one_of(
        st.sampled_from(sorted(known)).flatmap(
            lambda name: st.tuples(
                st.just(name), st.one_of(known[name], header_values.filter(bool))
            )
        ),
        st.tuples(
            any_name.filter(lambda n: n.lower() not in FRAMING),
            header_values,
        ),
    )


purge_values = st.one_of(
    st.sampled_from(LAYERS),
    st.sampled_from(TMS_IDS),
    st.sampled_from(["0-2", "3", "2-1", "0-99999999", "-180,-85,180,85", "1,2,3", "²"]),
    st.lists(st.one_of(st.integers(-(10**6), 10**6), st.floats(), st.text(max_size=5)), max_size=5),
    numbers,
    st.none(),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
json_bodies = st.one_of(
    st.fixed_dictionaries(
        {"layer": st.sampled_from(LAYERS)},
        optional={
            "tms": st.sampled_from(TMS_IDS),
            "zoom": st.sampled_from(["0-2", "3", [1, 2], "2-1", "0-30", "x"]),
            "bbox": st.sampled_from(["-10,-10,10,10", [-180, -85, 180, 85], "1,2", [1, "a"]]),
        },
    ).map(lambda d: json.dumps(d).encode()),
    st.dictionaries(
        st.sampled_from(["layer", "tms", "zoom", "bbox", "extra"]), purge_values, max_size=5
    ).map(lambda d: json.dumps(d).encode()),
    st.sampled_from([10, 1000, 100_000]).map(lambda n: b"[" * n + b"]" * n),
    st.sampled_from([b'{"layer": "bluemarble"}', b"null", b"[]", b"1e999", b'"x"', b"{"]),
)
bodies = st.one_of(
    st.none(),
    json_bodies,
    st.binary(max_size=2000),
    json_bodies.map(gzip.compress),
    json_bodies.map(zlib.compress),
    st.binary(max_size=200).map(lambda b: b"\x1f\x8b\x08\x00" + b),
)


@st.composite
def requests(draw: st.DrawFn, group: str, port: int) -> Request:
    """A request for the route group ``group``: a path made of the group's words, numbers,
    tile names and garbage (or a well-formed address), a query, headers and maybe a body."""
    if group == "tiles":
        words = (*LAYERS, *TMS_IDS, *ENCODINGS, "tilejson.json")
        path = draw(
            st.one_of(
                st.builds(
                    lambda layer, z, x, name: f"/tiles/{layer}/{z}/{x}/{name}",
                    st.sampled_from(LAYERS),
                    url_numbers,
                    url_numbers,
                    st.sampled_from(
                        ["0.png", "1.jpg", "2@2x.png", "3.jpeg", "1.gif", "0.webp", "1.terrarium"]
                    ),
                ),
                st.builds(
                    lambda layer, encoding, z, x, name: f"/tiles/{layer}/{encoding}/{z}/{x}/{name}",
                    st.sampled_from(LAYERS),
                    st.sampled_from(ENCODINGS),
                    url_numbers,
                    url_numbers,
                    st.sampled_from(["0.png", "1@2x.png", "2.jpg", "3"]),
                ),
                st.sampled_from(LAYERS).map(lambda layer: f"/tiles/{layer}/tilejson.json"),
                path_of("/tiles/", words),
            )
        )
        q = draw(
            query(
                ("format", "scale", "f", "style", "time"),
                ("png", "jpg", "jpeg", "webp", *ENCODINGS, "1", "2", "0", "²", *VARIANT_VALUES),
            )
        )
    elif group == "wmts":
        words = ("1.0.0", "WMTSCapabilities.xml", *LAYERS, "default", *TMS_IDS)
        path = draw(
            st.one_of(
                st.just("/wmts"),
                st.just("/wmts/1.0.0/WMTSCapabilities.xml"),
                st.builds(
                    lambda layer, tms, z, y, x: f"/wmts/1.0.0/{layer}/default/{tms}/{z}/{y}/{x}",
                    st.sampled_from(LAYERS),
                    st.sampled_from(TMS_IDS),
                    url_numbers,
                    url_numbers,
                    st.sampled_from(["0.png", "1.jpg", "2.jpeg", "x.png"]),
                ),
                path_of("/wmts/", words),
            )
        )
        q = draw(
            query(
                (
                    "SERVICE",
                    "REQUEST",
                    "VERSION",
                    "LAYER",
                    "STYLE",
                    "FORMAT",
                    "TileMatrixSet",
                    "TileMatrix",
                    "TileRow",
                    "TileCol",
                    "AcceptVersions",
                    "Sections",
                    "TIME",
                ),
                (
                    "WMTS",
                    "WMS",
                    "GetCapabilities",
                    "GetTile",
                    "GetFeatureInfo",
                    "1.0.0",
                    "image/png",
                    "image/jpeg",
                    "default",
                    *LAYERS,
                    *TMS_IDS,
                    "Contents,ServiceIdentification",
                    "All",
                    ",",
                    *VARIANT_VALUES,
                ),
            )
        )
    elif group == "ogcapi":
        words = ("collections", "map", "tiles", "tileMatrixSets", "conformance", *LAYERS, *TMS_IDS)
        path = draw(
            st.one_of(
                st.builds(
                    lambda layer, tms, z, y, x: (
                        f"/ogcapi/collections/{layer}/map/tiles/{tms}/{z}/{y}/{x}"
                    ),
                    st.sampled_from(LAYERS),
                    st.sampled_from(TMS_IDS),
                    url_numbers,
                    url_numbers,
                    url_numbers,
                ),
                st.sampled_from(["/ogcapi", "/ogcapi/", "/ogcapi/conformance"]),
                path_of("/ogcapi/", words),
            )
        )
        q = draw(
            query(("f", "datetime"), ("json", "png", "jpg", "jpeg", "html", "", *VARIANT_VALUES))
        )
    elif group == "admin":
        path = draw(
            st.one_of(
                st.just("/admin/purge"),
                path_of("/admin/", ("purge",), 3),
            )
        )
        q = draw(query(("layer",), LAYERS))
    else:
        words = ("healthz", "readyz", "layers.json", "viewer.js", "vendor", "leaflet@1.9.4", "")
        path = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "/",
                        "/healthz",
                        "/readyz",
                        "/layers.json",
                        "/viewer.js",
                        "/vendor/leaflet@1.9.4/dist/leaflet.js",
                        "/vendor/leaflet@1.9.4/LICENSE",
                    ]
                ),
                path_of("/", words),
            )
        )
        q = draw(query(("f", "x"), ("json", "")))
        first = unquote(path[1:].split("/")[0])
        if first.startswith("wmts"):
            # Routed to the WMTS front, whose format is another (its group covers it).
            path = "/x" + path
    if q or draw(st.sampled_from([False, True])):
        path = f"{path}?{q}" if q else f"{path}?"
    methods = ["GET", "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"]
    if group == "admin":
        methods = ["POST"] * 6 + methods
    method = draw(st.sampled_from(methods))
    port_host = f"127.0.0.1:{port}".encode()
    # Mostly one Host, the gateway's own, and distinct names: aiohttp refuses a request
    # without Host, or with a second Host, Content-Type, User-Agent... (hypothesis draws the
    # first choice of sampled_from most and shrinks toward it).
    headers = draw(
        st.lists(
            header_strategy(port_host),
            max_size=8,
            unique_by=(lambda header: header[0].lower())
            if draw(st.sampled_from([True, True, True, False]))
            else None,
        )
    )
    if group == "admin" and draw(st.sampled_from([True, True, False])):
        headers.append((b"Authorization", b"Bearer " + TOKEN.encode()))
    if not any(name.lower() == b"host" for name, _ in headers) and draw(
        st.sampled_from([True] * 9 + [False])
    ):
        headers.insert(0, (b"Host", port_host))
    body = None if method == "HEAD" else draw(st.one_of(json_bodies, bodies))
    return Request(method.encode(), path.encode(), tuple(headers), body, group)


# -- the gateway and the exchange ------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_port(imageserver_url: str, redis_url: str) -> Iterator[int]:
    """The gateway on a free port, served by ``server.start_site`` on an event loop of its own
    (a thread), with a Redis cache under a prefix of its own and the admin API on."""
    config = gateway_config(
        {
            "bluemarble": {
                "url": f"{imageserver_url}/bluemarble/ImageServer",
                "formats": ["png", "jpg"],
                "maxzoom": 3,
            },
            "rgb": {
                "url": f"{imageserver_url}/rgb/ImageServer",
                "formats": ["png"],
                # Variants: the style and time parameters reach a layer that has some.
                "styles": {"natural": {"bandIds": [0, 1, 2]}, "swapped": {"bandIds": [2, 1, 0]}},
                "time": {"values": ["2010-06-29", "2020-08-31"]},
                "max_variants": 4,
            },
            "dtm": {
                "url": f"{imageserver_url}/dtm/ImageServer",
                "formats": ["png", "webp", "terrarium", "terrain-rgb"],
            },
        },
        {"redis_url": redis_url, "prefix": f"fuzz{uuid.uuid4().hex[:8]}"},
        trust_proxy=True,
        # Generous: the fuzz must not see a 504 from an upstream slowed by a busy machine.
        upstream_timeout=120,
    )
    loop = asyncio.new_event_loop()
    started: concurrent.futures.Future[int] = concurrent.futures.Future()
    stopped = asyncio.Event()

    async def serve() -> None:
        try:
            runner, port = await start_site(create_app(config), "127.0.0.1", 0)
        except BaseException as exc:
            started.set_exception(exc)
            raise
        started.set_result(port)
        try:
            await stopped.wait()
        finally:
            await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TILE_GATEWAY_ADMIN_TOKEN", TOKEN)
        thread.start()
        try:
            yield started.result(timeout=120)
        finally:
            loop.call_soon_threadsafe(stopped.set)
            thread.join(60)
            loop.close()


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(port: int, request: Request) -> Answer:
    """Send ``request`` on a new connection and read the answer, then wait for the server to
    close the connection (it logs the access line before it does)."""
    head = request.method + b" " + request.target + b" HTTP/1.1\r\n"
    head += b"".join(name + b": " + value + b"\r\n" for name, value in request.headers)
    if request.body is not None:
        head += b"Content-Length: %d\r\n" % len(request.body)
    head += b"Connection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        # Answered (and closed) before the whole body was read: the answer is there to read.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + (request.body or b""))
        response = http.client.HTTPResponse(sock, method=request.method.decode())
        response.begin()
        body = response.read()
        headers = {name.lower(): value for name, value in response.getheaders()}
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    return Answer(response.status, headers, body)


def parser_refused(request: Request) -> bool:
    """Whether aiohttp's parser may refuse ``request`` before the gateway sees it: a line
    too long, no Host (or an empty one), a header it takes once given twice (RFC 9110 section
    5.3), a body that its Content-Encoding does not decode."""
    if len(request.target) + 16 > MAX_LINE:
        return True
    if any(len(name) + len(value) + 2 > MAX_LINE for name, value in request.headers):
        return True
    names = Counter(name.lower().decode() for name, _ in request.headers)
    # HTTP/1.1 needs exactly one Host (RFC 9112 section 3.2).
    if names["host"] != 1 or any(names[name] > 1 for name in SINGLETON_HEADERS):
        return True
    if any(n.lower() == b"host" and not v.strip(b" \t") for n, v in request.headers):
        return True  # aiohttp takes an empty Host for none
    codings = [v.strip().lower() for n, v in request.headers if n.lower() == b"content-encoding"]
    # Codings aiohttp cannot decode without optional packages (Brotli, zstandard); a body
    # that does not decode, when it arrives with the head, fails the parse of the message.
    return any(
        coding in (b"br", b"zstd")
        or (coding in (b"gzip", b"x-gzip", b"deflate") and not decodes(request.body or b""))
        for coding in codings
    )


def decodes(body: bytes) -> bool:
    """Whether ``body`` inflates completely as gzip, zlib or raw deflate (what aiohttp
    tries)."""
    for wbits in (16 + zlib.MAX_WBITS, zlib.MAX_WBITS, -zlib.MAX_WBITS):
        inflater = zlib.decompressobj(wbits)
        try:
            inflater.decompress(body)
        except zlib.error:
            continue
        if inflater.eof:
            return True
    return not body


IMAGES = {
    "image/png": b"\x89PNG\r\n\x1a\n",
    "image/jpeg": b"\xff\xd8\xff",
    "image/webp": b"RIFF",
}
ROOT_FILES = {
    "text/html",
    "text/javascript",
    "text/css",
    "text/plain",
    "text/markdown",
    "application/octet-stream",
}


def spec_501(request: Request, answer: Answer) -> bool:
    """Whether ``answer`` is the 501 OperationNotSupported that WMTS prescribes for
    GetFeatureInfo, which the service does not offer (OGC 06-121r3 Table 28; the OGC ETS
    ets-wmts10 expects it): the one answer above 499 that is no fault."""
    if request.front != "wmts" or answer.status != 501 or request.method == b"HEAD":
        return False
    exception = etree.fromstring(answer.body).find(f"{OWS}Exception")
    return exception is not None and exception.get("exceptionCode") == "OperationNotSupported"


def check_answer(request: Request, answer: Answer) -> None:
    """The answer's status is below 500 (but for ``spec_501``) and its body is in the front's
    own format."""
    assert answer.status < 500 or spec_501(request, answer), answer
    media_type = answer.headers.get("content-type", "").split(";")[0].strip()
    body = answer.body
    if answer.headers.get("content-encoding") == "gzip":
        body = gzip.decompress(body)
    if answer.status < 400:
        if not body:
            return
        if media_type in IMAGES:
            assert body.startswith(IMAGES[media_type])
            Image.open(io.BytesIO(body)).load()
        elif media_type == "application/json":
            json.loads(body)
        elif media_type in ("application/xml", "text/xml"):
            etree.fromstring(body)
        else:
            assert request.front == "root" and media_type in ROOT_FILES, media_type
        return
    if request.front == "wmts":
        assert media_type == "application/xml", answer
        if request.method != b"HEAD":
            report = etree.fromstring(body)
            assert report.tag == f"{OWS}ExceptionReport"
            assert report.find(f"{OWS}Exception/{OWS}ExceptionText") is not None
    else:
        assert media_type == "application/json", answer
        if request.method != b"HEAD":
            error = json.loads(body)["error"]
            assert error["code"] == answer.status and isinstance(error["message"], str)


def check_log(records: list[logging.LogRecord]) -> None:
    """No record at ERROR or above, none with a traceback, none with a control character."""
    for record in records:
        message = record.getMessage()
        assert record.levelno < logging.ERROR, message
        assert record.exc_info is None, message
        assert message.isprintable(), message


# -- the fuzz test ---------------------------------------------------------------------------


@pytest.mark.parametrize("group", GROUPS)
@FUZZ
@given(data=st.data())
def test_fuzz_route_group(
    gateway_port: int, caplog: pytest.LogCaptureFixture, group: str, data: st.DataObject
) -> None:
    caplog.set_level(logging.INFO)
    request = data.draw(requests(group, gateway_port), label="request")
    seen = len(caplog.records)
    answer = exchange(gateway_port, request)
    records = caplog.records[seen:]
    counts = STATS[group]
    counts["requests"] += 1
    counts[f"{answer.status // 100}xx"] += 1
    counts[">=500"] += answer.status >= 500 and not spec_501(request, answer)
    counts["501 GetFeatureInfo"] += spec_501(request, answer)
    counts["tracebacks or ERROR"] += sum(
        1 for r in records if r.exc_info or r.levelno >= logging.ERROR
    )
    check_log(records)
    if (
        answer.status in (400, 413, 414, 431)
        and answer.headers.get("content-type", "").startswith("text/plain")
        and parser_refused(request)
    ):
        counts[PARSER] += 1
        return
    check_answer(request, answer)


STATS: dict[str, Counter[str]] = {group: Counter() for group in GROUPS}
PARSER = "refused by aiohttp's parser"


@pytest.fixture(scope="module", autouse=True)
def report_counts() -> Iterator[None]:
    """Print the count of requests, statuses and parser refusals of each group at the end."""
    yield
    for group, counts in STATS.items():
        if counts:
            statuses = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k[1:] == "xx")
            print(
                f"\nfuzz {group}: {counts['requests']} requests, {counts['>=500']} answers >= 500, "
                f"{counts['tracebacks or ERROR']} log records with a traceback or at ERROR, "
                f"{counts[PARSER]} refused by aiohttp's parser, "
                f"{counts['501 GetFeatureInfo']} WMTS GetFeatureInfo 501 ({statuses})"
            )


def test_typical_answers(gateway_port: int) -> None:
    """The fuzz's gateway answers well-formed requests of every group as it should (so the
    fuzz reaches the handlers, not only the routing misses)."""
    host = ((b"Host", f"127.0.0.1:{gateway_port}".encode()),)

    def get(path: str, method: bytes = b"GET", body: bytes | None = None, **kw: Any) -> Answer:
        headers = host + tuple((k.encode(), v.encode()) for k, v in kw.items())
        return exchange(gateway_port, Request(method, path.encode(), headers, body, ""))

    assert get("/tiles/bluemarble/1/0/0.png").headers["content-type"] == "image/png"
    assert get("/wmts?SERVICE=WMTS&REQUEST=GetCapabilities").status == 200
    assert get("/ogcapi/collections/rgb/map/tiles/WebMercatorQuad").status == 200
    assert get("/readyz").status == 200
    purged = get(
        "/admin/purge",
        b"POST",
        b'{"layer": "rgb", "zoom": "1-2"}',
        Authorization=f"Bearer {TOKEN}",
    )
    assert purged.status == 200, purged
