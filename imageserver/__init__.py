"""Reference ArcGIS ImageServer: an aiohttp app that serves real rasters over the ArcGIS REST API.

It is the upstream for the demo and the tests. It implements the parts of the REST API that
clients read (``/arcgis/rest/info``, the service catalog, the ImageServer root resource,
``exportImage`` and the pixel queries ``identify``, ``getSamples``,
``computeStatisticsHistograms`` and ``keyProperties``), rendering with rasterio/GDAL, the
raster analysis task ``CreateImageCollection`` as asynchronous GP jobs that publish new image
services (:mod:`imageserver.gp`), and, when configured, ArcGIS token security
(:mod:`imageserver.tokens`) and CORS. Entry points:

- :func:`imageserver.config.load_config` reads the YAML service list;
- :func:`imageserver.app.create_app` builds the :class:`aiohttp.web.Application`;
- ``python -m imageserver --config FILE`` runs it standalone.
"""
