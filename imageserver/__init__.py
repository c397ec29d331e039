"""Reference ArcGIS ImageServer: an aiohttp app that serves real rasters over the ArcGIS REST API.

It is the upstream for the demo and the tests. It implements the parts of the REST API that
clients read (``/arcgis/rest/info``, the service catalog, the ImageServer root resource and
``exportImage``), rendering with rasterio/GDAL. Entry points:

- :func:`imageserver.config.load_config` reads the YAML service list;
- :func:`imageserver.app.create_app` builds the :class:`aiohttp.web.Application`;
- ``python -m imageserver --config FILE`` runs it standalone.
"""
