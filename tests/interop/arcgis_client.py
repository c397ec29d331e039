"""The ArcGIS API for Python as a user runs it against a stand-alone ArcGIS Server, pointed at
the gateway: run by the interpreter of ``.venv/arcgis`` (scripts/install-test-deps.sh), never
imported by the tests, which read what it prints and saves.

    python arcgis_client.py <gateway>/arcgis <service name> <xmin,ymin,xmax,ymax> <width>
        <height> <wkid> <output folder>

It connects with ``arcgis.gis.server.ServicesDirectory`` (the package's connection to an ArcGIS
Server site, where ``GIS`` needs a Portal), reads ``ImageryLayer(url, gis=directory)``'s
``properties``, exports the bbox at the size as PNG (``export_image(..., f="image",
save_folder=..., save_file=...)``) into ``<output folder>/export.png``, and asks for the same
export as JSON (``f="json"``, whose ``href`` the gateway serves). ``all_ssl=False`` because the
package rewrites every ``http://`` URL to ``https://`` unless told so; the test gateway has no TLS.

Every connection and name lookup other than to a loopback address is refused by an audit hook
(PEP 578), so a call the package makes to ArcGIS Online fails at once instead of hanging; each
refusal is reported. Everything the client receives (status, headers and body of every response,
through ``requests``' ``HTTPAdapter.send``, which all of the package's sessions use) is written to
``<output folder>/received.bin``. The last line on stdout is a JSON report: ``requests``
(method and URL), ``answers`` (status and URL), ``refused``, ``properties`` (``name``,
``bandCount``, ``extent`` as ``[xmin, ymin, xmax, ymax]``), ``href`` (of the JSON export) and
``image`` (the saved path).
"""

from __future__ import annotations

import ipaddress
import json
import socket
import sys
from pathlib import Path
from typing import Any

refused: list[str] = []


def _loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) is a loopback address or ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


def _refuse_the_network(event: str, args: tuple[Any, ...]) -> None:
    """Audit hook: refuse ``socket.connect`` and ``socket.getaddrinfo`` to anything not on the
    loopback interface, with the OSError a refused connection raises."""
    if event == "socket.getaddrinfo":
        host = args[0].decode() if isinstance(args[0], bytes) else str(args[0])
        if not _loopback(host):
            refused.append(f"name lookup of {host}")
            raise OSError(f"refused by the test: name lookup of {host}")
    elif event == "socket.connect":
        sock, address = args
        if sock.family in (socket.AF_INET, socket.AF_INET6) and not _loopback(str(address[0])):
            refused.append(f"connection to {address}")
            raise OSError(f"refused by the test: connection to {address}")


sys.addaudithook(_refuse_the_network)

import requests.adapters  # noqa: E402  (after the hook: nothing may connect before it)
from arcgis.gis.server import ServicesDirectory  # noqa: E402
from arcgis.raster import ImageryLayer  # noqa: E402


def main(argv: list[str]) -> dict[str, Any]:
    """Run the client (arguments as in the module docstring) and return its report."""
    site, name, bbox, width, height, wkid, folder = argv
    output = Path(folder)
    received = (output / "received.bin").open("wb")
    sent: list[str] = []
    answers: list[str] = []
    send = requests.adapters.HTTPAdapter.send

    def recording_send(
        adapter: requests.adapters.HTTPAdapter,
        request: requests.PreparedRequest,
        *args: Any,
        **kwargs: Any,
    ) -> requests.Response:
        response = send(adapter, request, *args, **kwargs)
        sent.append(f"{request.method} {request.url}")
        answers.append(f"{response.status_code} {response.url}")
        received.write(f"{answers[-1]}\n".encode())
        received.write(b"".join(f"{k}: {v}\n".encode() for k, v in response.headers.items()))
        received.write(response.content + b"\n")  # read now; requests replays it to the caller
        return response

    requests.adapters.HTTPAdapter.send = recording_send  # type: ignore[method-assign]
    directory = ServicesDirectory(url=site, all_ssl=False, verify_cert=True, timeout=60)
    layer = ImageryLayer(f"{site}/rest/services/{name}/ImageServer", gis=directory)
    properties = layer.properties
    xmin, ymin, xmax, ymax = (float(value) for value in bbox.split(","))
    extent = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}
    size = [int(width), int(height)]
    image = layer.export_image(
        bbox={**extent, "spatialReference": {"wkid": int(wkid)}},
        image_sr=int(wkid),
        size=size,
        export_format="png",
        f="image",
        save_folder=str(output),
        save_file="export.png",
    )
    exported = layer.export_image(
        bbox={**extent, "spatialReference": {"wkid": int(wkid)}},
        image_sr=int(wkid),
        size=size,
        export_format="png",
        f="json",
    )
    received.close()
    return {
        "requests": sent,
        "answers": answers,
        "refused": refused,
        "properties": {
            "name": properties["name"],
            "bandCount": properties["bandCount"],
            "extent": [properties["extent"][k] for k in ("xmin", "ymin", "xmax", "ymax")],
        },
        "href": exported.get("href"),
        "image": str(image),
    }


if __name__ == "__main__":
    try:
        report = main(sys.argv[1:])
    finally:
        # Also when the client failed: a refusal is the first thing to look at.
        print("refused:", refused, file=sys.stderr)
    print(json.dumps(report))
