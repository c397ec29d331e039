"use strict";
// Shared by the test pages (served by test_map_clients.py from another origin than the
// gateway): the query parameters, and the counters check_page.mjs reads.
//
//   ?gw=<gateway origin>&layer=<name>&format=png|jpg&lon=<deg>&lat=<deg>&z=<TileMatrix>
//   plus what a page needs of its own (read with page.param).
const query = new URLSearchParams(location.search);
const page = {
  gateway: query.get("gw"),
  layer: query.get("layer"),
  format: query.get("format"),
  mime: { png: "image/png", jpg: "image/jpeg" }[query.get("format")],
  lon: Number(query.get("lon")),
  lat: Number(query.get("lat")),
  z: Number(query.get("z")),
  param: (name) => query.get(name),
};

// loaded/errors count the library's own tile events; done is set when the library says the
// view is complete; info holds what the page learnt on the way, for the test to check.
window.pageStats = { loaded: 0, errors: 0, done: false, info: { pageOrigin: location.origin } };

function tileLoaded() { window.pageStats.loaded += 1; }
function tileFailed() { window.pageStats.errors += 1; }
function finished() { window.pageStats.done = true; }

// A setup failure (capabilities unreadable, layer missing) ends the page at once, with the
// reason in the report instead of a timeout.
function fail(error) {
  window.pageStats.info.failure = String(error);
  console.error(error);
  tileFailed();
  finished();
}
