"use strict";
// The viewer: one layer at a time in Leaflet (XYZ tiles), OpenLayers (WMTS, set up from the
// capabilities, in the TileMatrixSet chosen) or MapLibre GL (TileJSON), in the style and at
// the date chosen when the layer has styles or time values, and copy-paste snippets for those
// three, QGIS and GDAL. Plain script, no build step. A layer with an elevation encoding
// (layers.json "terrain") is shown by MapLibre as 3D terrain.
//
// The libraries come from the gateway itself (vendor/, the default) or from a CDN, as the
// page's tile-gateway-libraries meta tag says (viewer.libraries in the config). Both hold the
// npm packages' files byte for byte, so one set of Subresource Integrity hashes checks either:
// the hashes of the files in gateway/web/vendor (scripts/vendor-web-libraries.py checks them).
// Each library is loaded the first time it is shown. MapLibre stays on 5.x: it is the last
// line with a one-file UMD build (v6 is ES modules only, whose imported chunks an integrity
// attribute on the entry script does not cover).
const LIBRARIES = {
  leaflet: {
    title: "Leaflet",
    files: [
      ["leaflet@1.9.4/dist/leaflet.css", "sha256-p4NxAoJBhIIN+hmNHrzRCf9tD/miZyoHS5obTRR9BMY="],
      ["leaflet@1.9.4/dist/leaflet.js", "sha256-20nQCchB9co0qIjJZRGuk2/Z9VM+kNiyxNV1lvTlZBo="],
    ],
  },
  openlayers: {
    title: "OpenLayers",
    files: [
      ["ol@10.11.0/ol.css",
       "sha384-Jpg1uvTciFJuHq+90Ly0/2SKRT9yS5OhbIN5FuFoFWji9fc44ok8xxO88CJi8Z5W"],
      ["ol@10.11.0/dist/ol.js",
       "sha384-rwbCGPbgxLkcQaFvIra1Vz3KBT1yBeF2/1VgLs/gCCNCJ61GHJGimHpkufVKcqap"],
    ],
  },
  maplibre: {
    title: "MapLibre",
    files: [
      ["maplibre-gl@5.24.1/dist/maplibre-gl.css",
       "sha384-uTttxo/aOKbdE5RlD/SPzSDoDmNvGlUYPjONi2MN/b7c9HPSvW07OIuyP7uL6jxK"],
      ["maplibre-gl@5.24.1/dist/maplibre-gl.js",
       "sha384-nXMl9YiLoSG5KBPTFgvxVuIqQQcqIvo0bFrvoEaGJC6r7IibIzF1S36Zbf/sKBtL"],
    ],
  },
};
const MIME = { png: "image/png", jpg: "image/jpeg", webp: "image/webp" };
// How much MapLibre raises the terrain of an elevation layer: gentle hills show, 1 is true.
const EXAGGERATION = 1.5;
// Metres per pixel at zoom 0 of the 256-pixel Web Mercator pyramid; the shared view keeps
// that zoom scale, whatever the library or projection shows it.
const ZOOM0_RESOLUTION = 156543.03392804097;
// Everything absolute is built on the page's own folder, so the viewer works behind a proxy
// that serves the gateway under a path prefix.
const BASE = new URL(".", location.href).href;
// A relative base ("vendor/") is on the page's folder too; a CDN's is absolute.
const LIBRARY_BASE = new URL(
  document.querySelector('meta[name="tile-gateway-libraries"]').content, BASE).href;

// Counters read by the browser tests (tests/browser) and shown to the user; show() starts
// a fresh set for each map. idle: the library has drawn all it loaded.
function freshStats(layer = null, client = null) {
  return { layer, client, tileMatrixSet: null, loaded: 0, errors: 0, idle: false };
}
window.viewerStats = freshStats();

const state = {
  layer: null,
  client: "leaflet",
  tms: "WebMercatorQuad",
  style: null, // of the layer's styles; null: its default
  time: null, // of the layer's time values; null: its default
  crs: "EPSG:3857", // of the TileMatrixSet, for the QGIS snippet
  view: { lon: 0, lat: 20, zoom: 2 },
  map: null, // { view(): {lon, lat, zoom}, destroy() } of the map shown
  generation: 0, // bumped by every show(): a later call wins over one still loading
};
const loading = new Map(); // memoised promises: libraries, capabilities, TileJSON documents
const statusLine = document.getElementById("status");
const tmsSelect = document.getElementById("tms");
const styleSelect = document.getElementById("style");
const timeSelect = document.getElementById("time");

function once(key, make) {
  if (!loading.has(key)) loading.set(key, make());
  return loading.get(key);
}

function loadLibrary(client) {
  return once(client, () => Promise.all(LIBRARIES[client].files.map(([file, integrity]) =>
    new Promise((resolve, reject) => {
      const url = LIBRARY_BASE + file;
      const css = file.endsWith(".css");
      const element = document.createElement(css ? "link" : "script");
      element.integrity = integrity;
      element.crossOrigin = "anonymous"; // integrity checks on a CDN need a CORS request
      element.onload = resolve;
      element.onerror = () => reject(new Error(`cannot load ${url}`));
      if (css) {
        element.rel = "stylesheet";
        element.href = url;
      } else {
        element.src = url;
      }
      document.head.append(element);
    }))));
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response;
}

function capabilities() {
  return once("capabilities", async () => {
    const response = await fetchOk(`${BASE}wmts/1.0.0/WMTSCapabilities.xml`);
    return new ol.format.WMTSCapabilities().read(await response.text());
  });
}

// The chosen style and time as tile URLs carry them ("?style=...&time=..."); the layer's
// defaults are left out, so a default view's URLs are the plain ones.
function variantQuery(layer) {
  const params = new URLSearchParams();
  if (state.style && state.style !== layer.default_style) params.set("style", state.style);
  if (state.time && state.time !== layer.default_time) params.set("time", state.time);
  const query = params.toString();
  return query ? `?${query}` : "";
}

function tileJsonUrl(layer) {
  return `${BASE}tiles/${layer.name}/tilejson.json${variantQuery(layer)}`;
}

function tileJson(layer) {
  // null when the gateway has none: the viewer then keeps its view.
  const url = tileJsonUrl(layer);
  return once(`tilejson:${url}`, () =>
    fetchOk(url).then((response) => response.json()).catch(() => null));
}

// The layer's first map format (its elevation encodings are PNG files of heights).
function mapFormat(layer) {
  return layer.formats.find((format) => Object.hasOwn(MIME, format));
}

function xyzTemplate(layer, retina = "") {
  return `${BASE}tiles/${layer.name}/{z}/{x}/{y}${retina}.${mapFormat(layer)}` +
    variantQuery(layer);
}

// The TileJSON of the layer's elevation tiles, which carries MapLibre's raster-dem encoding
// (heights have no style: the default variant).
function demTileJsonUrl(layer) {
  return `${BASE}tiles/${layer.name}/tilejson.json?format=${layer.terrain}`;
}

// The chosen style's identifier (the layer's default when none is chosen).
function styleOf(layer) {
  return state.style ?? layer.default_style;
}

// The TileMatrixSets a layer's capabilities link to, with the CRS each is in.
function tileMatrixSets(caps, layer) {
  const entry = caps.Contents.Layer.find((item) => item.Identifier === layer.name);
  return (entry ? entry.TileMatrixSetLink : []).map(({ TileMatrixSet: id }) => {
    const set = caps.Contents.TileMatrixSet.find((item) => item.Identifier === id);
    return { id, crs: shortCrs(set ? set.SupportedCRS : "") };
  });
}

// "urn:ogc:def:crs:EPSG::4326" -> "EPSG:4326", "urn:ogc:def:crs:OGC:1.3:CRS84" -> "OGC:CRS84".
function shortCrs(urn) {
  const parts = urn.split(":");
  return parts.length > 2 ? `${parts[4]}:${parts[parts.length - 1]}` : urn;
}

// --- counters ---------------------------------------------------------------------------

function tileLoaded() { window.viewerStats.loaded += 1; showStats(); }
function tileFailed() { window.viewerStats.errors += 1; showStats(); }
function busy() { window.viewerStats.idle = false; }
function idle() { window.viewerStats.idle = true; showStats(); }

function showStats() {
  const s = window.viewerStats;
  const where = s.tileMatrixSet ? ` (${s.tileMatrixSet})` : "";
  statusLine.textContent = `${s.layer} in ${LIBRARIES[s.client].title}${where}: ` +
    `${s.loaded} tiles loaded, ${s.errors} errors`;
}

// --- the three maps: each returns { view(), destroy() } ------------------------------------

function wrapLon(lon) {
  return ((((lon + 180) % 360) + 360) % 360) - 180;
}

function leafletMap(element, layer, view) {
  const map = L.map(element, { worldCopyJump: true })
    .setView([view.lat, view.lon], Math.round(view.zoom));
  // {r} becomes "@2x" on high-density screens: the gateway serves 512 px tiles there.
  const tiles = L.tileLayer(xyzTemplate(layer, "{r}"), {
    minZoom: layer.minzoom, maxZoom: layer.maxzoom, attribution: layer.attribution,
    crossOrigin: true,
  });
  tiles.on({ tileload: tileLoaded, tileerror: tileFailed, loading: busy, load: idle });
  tiles.addTo(map);
  return {
    view() {
      const center = map.getCenter();
      return { lon: wrapLon(center.lng), lat: center.lat, zoom: map.getZoom() };
    },
    destroy: () => map.remove(),
  };
}

function openLayersMap(element, layer, view, caps) {
  // OpenLayers finds a style by its Title, which the gateway sets to the identifier.
  const options = ol.source.WMTS.optionsFromCapabilities(caps, {
    layer: layer.name, matrixSet: state.tms, format: MIME[mapFormat(layer)],
    style: styleOf(layer), crossOrigin: "anonymous",
  });
  if (!options) throw new Error(`the capabilities have no ${state.tms} for ${layer.name}`);
  // The Time dimension starts at its Default; the chosen date replaces it.
  if (state.time) options.dimensions = { ...options.dimensions, Time: state.time };
  const source = new ol.source.WMTS(options);
  source.on("tileloadend", tileLoaded);
  source.on("tileloaderror", tileFailed);
  const { projection, tileGrid } = options;
  const unitsPerMetre = 1 / projection.getMetersPerUnit();
  // Start on the tile level closest to the shared zoom, and zoom by tile levels: tiles are
  // then drawn at their own size, never resampled.
  const wanted = (ZOOM0_RESOLUTION / 2 ** view.zoom) * unitsPerMetre;
  const olView = new ol.View({
    projection,
    resolutions: tileGrid.getResolutions(),
    constrainResolution: true,
    center: ol.proj.fromLonLat([view.lon, view.lat], projection),
    resolution: tileGrid.getResolution(tileGrid.getZForResolution(wanted)),
  });
  const map = new ol.Map({
    target: element, layers: [new ol.layer.Tile({ source })], view: olView,
  });
  map.on("loadstart", busy);
  map.on("rendercomplete", idle);
  return {
    view() {
      const [lon, lat] = ol.proj.toLonLat(olView.getCenter(), projection);
      const zoom = Math.log2(ZOOM0_RESOLUTION * unitsPerMetre / olView.getResolution());
      return { lon: wrapLon(lon), lat, zoom };
    },
    destroy: () => map.setTarget(undefined),
  };
}

function mapLibreMap(element, layer, view) {
  const style = {
    version: 8,
    // tileSize is not part of TileJSON and MapLibre's default is 512.
    sources: { gateway: { type: "raster", url: tileJsonUrl(layer), tileSize: 256 } },
    layers: [{ id: layer.name, type: "raster", source: "gateway" }],
  };
  if (layer.terrain) {
    // The elevation TileJSON gives MapLibre the encoding and tileSize of the raster-dem tiles;
    // the heights raise the map (terrain) and shade it (hillshade).
    style.sources.dem = { type: "raster-dem", url: demTileJsonUrl(layer) };
    style.layers.push({ id: "hillshade", type: "hillshade", source: "dem" });
    style.terrain = { source: "dem", exaggeration: EXAGGERATION };
  }
  const map = new maplibregl.Map({
    container: element,
    center: [view.lon, view.lat],
    // MapLibre's zoom counts 512-pixel worlds: one less than Leaflet's for the same scale.
    zoom: view.zoom - 1,
    pitch: layer.terrain ? 60 : 0,
    style,
  });
  if (layer.terrain) map.addControl(new maplibregl.TerrainControl({ source: "dem" }));
  map.on("sourcedata", (event) => { if (event.tile) tileLoaded(); });
  map.on("error", tileFailed);
  map.on("dataloading", busy);
  map.on("idle", idle);
  return {
    view() {
      const center = map.getCenter();
      return { lon: wrapLon(center.lng), lat: center.lat, zoom: map.getZoom() + 1 };
    },
    destroy: () => map.remove(),
  };
}

const MAPS = { leaflet: leafletMap, openlayers: openLayersMap, maplibre: mapLibreMap };

// --- snippets ------------------------------------------------------------------------------

// The MapLibre snippet: the raster layer, and for an elevation layer its 3D terrain.
function mapLibreSnippet(layer, center, zoom) {
  const name = layer.name;
  const dem = layer.terrain ? `
      "${name}-dem": { type: "raster-dem", url: "${demTileJsonUrl(layer)}" },` : "";
  const shade = layer.terrain ? `
      { id: "${name}-hillshade", type: "hillshade", source: "${name}-dem" },` : "";
  const terrain = layer.terrain ? `
    terrain: { source: "${name}-dem", exaggeration: ${EXAGGERATION} },` : "";
  return `new maplibregl.Map({
  container: "map",
  center: ${center},
  zoom: ${Math.round(zoom) - 1},${layer.terrain ? "\n  pitch: 60," : ""}
  style: {
    version: 8,
    sources: {
      "${name}": { type: "raster", url: "${tileJsonUrl(layer)}", tileSize: 256 },${dem}
    },
    layers: [
      { id: "${name}", type: "raster", source: "${name}" },${shade}
    ],${terrain}
  },
});`;
}

function snippets(layer) {
  const name = layer.name;
  const ext = mapFormat(layer);
  const caps = `${BASE}wmts/1.0.0/WMTSCapabilities.xml`;
  const style = styleOf(layer);
  const time = state.time ?? layer.default_time;
  // GDAL's WMTS driver takes the style in the connection string; a Time dimension keeps its
  // Default there, so a chosen date goes through the XYZ URL instead (TMS minidriver).
  const gdalStyle = layer.styles.length ? `,style=${style}` : "";
  const gdal = `WMTS:${caps},layer=${name},tilematrixset=${state.tms}${gdalStyle}`;
  const { lon, lat, zoom } = state.view;
  const center = `[${lon.toFixed(4)}, ${lat.toFixed(4)}]`;
  const olStyle = layer.styles.length ? `\n  style: "${style}",` : "";
  const olTime = time ? `\noptions.dimensions = { ...options.dimensions, Time: "${time}" };` : "";
  const qgisTime = time ? `&tileDimensions=Time%3D${encodeURIComponent(time)}` : "";
  return [
    ["url", "Tile URL (XYZ)", xyzTemplate(layer)],
    ["leaflet", "Leaflet (XYZ)", `L.tileLayer("${xyzTemplate(layer, "{r}")}", {
  minZoom: ${layer.minzoom},
  maxZoom: ${layer.maxzoom},
  attribution: ${JSON.stringify(layer.attribution)},
}).addTo(map); // {r}: 512 px "@2x" tiles on high-density screens`],
    ["openlayers", "OpenLayers (WMTS)", `const response = await fetch("${caps}");
const capabilities = new ol.format.WMTSCapabilities().read(await response.text());
const options = ol.source.WMTS.optionsFromCapabilities(capabilities, {
  layer: "${name}",
  matrixSet: "${state.tms}",
  format: "${MIME[ext]}",${olStyle}
});${olTime}
new ol.Map({
  target: "map",
  layers: [new ol.layer.Tile({ source: new ol.source.WMTS(options) })],
  view: new ol.View({
    projection: options.projection,
    center: ol.proj.fromLonLat(${center}, options.projection),
    zoom: ${Math.round(zoom)},
  }),
});`],
    ["maplibre", layer.terrain ? "MapLibre (TileJSON, 3D terrain)" : "MapLibre (TileJSON)",
      mapLibreSnippet(layer, center, zoom)],
    ["qgis", "QGIS", `# Python console; or Layer > Add WMS/WMTS Layer with the capabilities URL
iface.addRasterLayer(
    "crs=${state.crs}&format=${MIME[ext]}&layers=${name}&styles=${style}"
    "&tileMatrixSet=${state.tms}${qgisTime}&url=${caps}",
    "${name}", "wms")
# XYZ Tiles > New Connection, URL: ${xyzTemplate(layer)}`],
    ["gdal", "GDAL", `gdalinfo "${gdal}"
gdal_translate -outsize 2048 0 "${gdal}" ${name}.tif`],
  ];
}

function showSnippets(layer) {
  const box = document.getElementById("snippets");
  box.replaceChildren();
  for (const [client, title, text] of snippets(layer)) {
    const details = document.createElement("details");
    details.open = client === state.client || client === "url";
    const summary = document.createElement("summary");
    summary.textContent = title;
    const pre = document.createElement("pre");
    pre.dataset.client = client;
    pre.textContent = text;
    const copy = document.createElement("button");
    copy.type = "button";
    copy.textContent = "Copy";
    copy.setAttribute("aria-label", `Copy the ${title} snippet`);
    copy.addEventListener("click", () => copySnippet(pre, copy));
    details.append(summary, pre, copy);
    box.append(details);
  }
}

async function copySnippet(pre, button) {
  try {
    await navigator.clipboard.writeText(pre.textContent);
    button.textContent = "Copied";
  } catch {
    // No clipboard outside secure contexts (plain http off localhost): select the text instead.
    getSelection().selectAllChildren(pre);
    button.textContent = "Selected: press Ctrl+C";
  }
  setTimeout(() => { button.textContent = "Copy"; }, 2000);
}

// --- putting it together ---------------------------------------------------------------------

// The view that shows a regional layer's bounds ([west, south, east, north]) whole.
function fitView([west, south, east, north], layer) {
  const box = document.getElementById("map").getBoundingClientRect();
  const mercator = (lat) => Math.log(Math.tan(Math.PI / 4 + (lat * Math.PI) / 360)) / (2 * Math.PI);
  const zoom = Math.floor(Math.log2(Math.min(
    (box.width / 256) * (360 / (east - west)),
    box.height / 256 / (mercator(north) - mercator(south)))));
  return {
    lon: (west + east) / 2,
    lat: (south + north) / 2,
    zoom: Math.min(layer.maxzoom, Math.max(layer.minzoom, zoom)),
  };
}

function freshMapElement() {
  const map = document.createElement("div");
  map.id = "map";
  map.setAttribute("role", "region");
  map.setAttribute("aria-label", `Map of ${state.layer.title}`);
  document.getElementById("map").replaceWith(map);
  return map;
}

async function show({ fit = false } = {}) {
  const generation = ++state.generation;
  const { layer, client } = state;
  if (state.map) {
    state.view = state.map.view();
    state.map.destroy();
    state.map = null;
  }
  window.viewerStats = freshStats(layer.name, client);
  window.viewerStats.style = styleOf(layer);
  window.viewerStats.time = state.time ?? layer.default_time;
  for (const button of document.querySelectorAll("#layers button")) {
    button.setAttribute("aria-pressed", String(button.dataset.layer === layer.name));
  }
  document.querySelector(`input[name=client][value=${client}]`).checked = true;
  document.getElementById("tms-field").hidden = client !== "openlayers";
  showVariantPickers(layer);
  statusLine.textContent = `loading ${LIBRARIES[client].title}…`;
  try {
    await loadLibrary(client);
    let caps = null;
    if (client === "openlayers") {
      caps = await capabilities();
      const sets = tileMatrixSets(caps, layer);
      if (!sets.some(({ id }) => id === state.tms) && sets.length) state.tms = sets[0].id;
      const options = sets.map(({ id, crs }) => new Option(`${id} (${crs})`, id));
      tmsSelect.replaceChildren(...options);
      tmsSelect.value = state.tms;
      state.crs = sets.find(({ id }) => id === state.tms)?.crs ?? state.crs;
      window.viewerStats.tileMatrixSet = state.tms;
    }
    const bounds = fit ? (await tileJson(layer))?.bounds : null;
    if (generation !== state.generation) return;
    if (bounds && bounds[2] - bounds[0] < 180) state.view = fitView(bounds, layer);
    const hash = [layer.name, client, ...(client === "openlayers" ? [state.tms] : [])];
    history.replaceState(null, "", `#${hash.map(encodeURIComponent).join("/")}`);
    showSnippets(layer);
    state.map = MAPS[client](freshMapElement(), layer, state.view, caps);
    showStats();
  } catch (error) {
    if (generation !== state.generation) return;
    window.viewerStats.errors += 1;
    statusLine.textContent =
      `cannot show ${layer.name} in ${LIBRARIES[client].title}: ${error.message}`;
  }
}

// The style and date pickers of the layer shown: hidden when it has no styles or times.
function showVariantPickers(layer) {
  const pick = (select, field, values, chosen) => {
    document.getElementById(field).hidden = values.length === 0;
    select.replaceChildren(...values.map(([value, title]) => new Option(title, value)));
    if (values.length) select.value = chosen;
  };
  pick(styleSelect, "style-field", layer.styles.map(({ name, title }) => [name, title]),
    styleOf(layer));
  pick(timeSelect, "time-field", layer.times.map((value) => [value, value]),
    state.time ?? layer.default_time);
}

for (const radio of document.querySelectorAll("input[name=client]")) {
  radio.addEventListener("change", () => { state.client = radio.value; show(); });
}
tmsSelect.addEventListener("change", () => { state.tms = tmsSelect.value; show(); });
styleSelect.addEventListener("change", () => { state.style = styleSelect.value; show(); });
timeSelect.addEventListener("change", () => { state.time = timeSelect.value; show(); });

// #<layer>[/<client>[/<TileMatrixSet>]] picks what is shown first.
fetchOk("layers.json").then((response) => response.json()).then(({ layers }) => {
  const [wanted, client, tms] = location.hash.slice(1).split("/").map(decodeURIComponent);
  const list = document.getElementById("layers");
  for (const layer of layers) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = layer.title;
    button.dataset.layer = layer.name;
    button.addEventListener("click", () => {
      // Another layer has other styles and times: start on its defaults.
      if (state.layer !== layer) state.style = state.time = null;
      state.layer = layer;
      show({ fit: true });
    });
    item.append(button);
    list.append(item);
  }
  if (!layers.length) {
    statusLine.textContent = "no layers configured";
    return;
  }
  state.layer = layers.find((layer) => layer.name === wanted) ?? layers[0];
  if (Object.hasOwn(MAPS, client)) state.client = client;
  if (tms) state.tms = tms;
  show({ fit: true });
}).catch((error) => { statusLine.textContent = `cannot read layers.json: ${error.message}`; });
