"""The ArcGIS API for Python on a time-enabled image service, as a user drives it: run by the
interpreter of ``.venv/arcgis`` (scripts/install-test-deps.sh), never imported by the tests,
which read what it prints and saves.

    python arcgis_time_client.py <site>/arcgis <service name> <xmin,ymin,xmax,ymax> <width>
        <height> <wkid> <t2010 ms> <t2020 ms> <x,y> <output folder>

It opens ``ImageryLayer(url, gis=ServicesDirectory(site))`` and exports the bbox at the size as
nearest-neighbour GeoTIFFs into the output folder: ``default.tif`` (the service's own mosaic),
``time_2010.tif`` (``export_image(time=[t, t])``), ``filter_2020.tif``
(``filter_by(time=[t, None])``: a catalog ``query`` for the ObjectIDs, then a LockRaster
mosaic rule), ``locked_1.tif`` (``mosaic_by(lock_rasters=[1])``) and ``oldest_first.tif``
(``mosaic_by(sort_by="AcquisitionDate")``). It identifies the point at the 2010 instant and with
the 2020 scene locked. The last line on stdout is a JSON report: ``timeInfo``, ``objectIds``
(the catalog query of ``filter_by``), ``identify`` (the two ``value``), ``requests`` and
``refused``.

``arcgis_client`` is imported first: its audit hook refuses every connection and name lookup
outside the loopback interface, so a call to ArcGIS Online fails at once.
"""

from __future__ import annotations

import datetime
import json
import sys
from typing import Any

from arcgis_client import refused  # installs the audit hook before anything connects

# isort: split
import requests.adapters
from arcgis.gis.server import ServicesDirectory
from arcgis.raster import ImageryLayer


def main(argv: list[str]) -> dict[str, Any]:
    """Run the client (arguments as in the module docstring) and return its report."""
    site, name, bbox, width, height, wkid, t2010, t2020, point, folder = argv
    sent: list[str] = []
    send = requests.adapters.HTTPAdapter.send

    def recording_send(
        adapter: requests.adapters.HTTPAdapter,
        request: requests.PreparedRequest,
        *args: Any,
        **kwargs: Any,
    ) -> requests.Response:
        sent.append(f"{request.method} {request.url}")
        return send(adapter, request, *args, **kwargs)

    requests.adapters.HTTPAdapter.send = recording_send  # type: ignore[method-assign]
    directory = ServicesDirectory(url=site, all_ssl=False, verify_cert=True, timeout=60)
    url = f"{site}/rest/services/{name}/ImageServer"
    layer = ImageryLayer(url, gis=directory)
    time_info = dict(layer.properties["timeInfo"])
    xmin, ymin, xmax, ymax = (float(value) for value in bbox.split(","))
    extent = {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}
    sr = {"wkid": int(wkid)}

    def save(imagery: ImageryLayer, file: str, **params: Any) -> None:
        imagery.export_image(
            bbox={**extent, "spatialReference": sr},
            image_sr=int(wkid),
            size=[int(width), int(height)],
            export_format="tiff",
            interpolation="RSP_NearestNeighbor",
            f="image",
            save_folder=folder,
            save_file=file,
            **params,
        )

    early, late = int(t2010), int(t2020)
    save(layer, "default.tif")
    save(layer, "time_2010.tif", time=[early, early])
    # The middle of the ten years: only the 2020 scene is after it.
    filtered = layer.filter_by(time=[(early + late) // 2, None])
    save(filtered, "filter_2020.tif")
    locked = ImageryLayer(url, gis=directory)
    locked.mosaic_by(lock_rasters=[1])
    save(locked, "locked_1.tif")
    oldest = ImageryLayer(url, gis=directory)
    oldest.mosaic_by(sort_by="AcquisitionDate")
    save(oldest, "oldest_first.tif")
    x, y = (float(value) for value in point.split(","))
    at = {"x": x, "y": y, "spatialReference": sr}
    # identify takes a datetime (the package converts it with .timestamp()).
    moment = datetime.datetime.fromtimestamp(early / 1000, tz=datetime.UTC)
    in_2010 = layer.identify(geometry=at, time_extent=moment)
    locked_2020 = layer.identify(
        geometry=at, mosaic_rule={"mosaicMethod": "esriMosaicLockRaster", "lockRasterIds": [2]}
    )
    return {
        "timeInfo": time_info,
        "objectIds": filtered._mosaic_rule["lockRasterIds"],
        "identify": [in_2010["value"], locked_2020["value"]],
        "requests": sent,
        "refused": refused,
    }


if __name__ == "__main__":
    try:
        report = main(sys.argv[1:])
    finally:
        print("refused:", refused, file=sys.stderr)
    print(json.dumps(report))
