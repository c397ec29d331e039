#!/usr/bin/env node
// Opens the gateway's viewer page in headless Debian Chromium and reports what it saw as ONE
// JSON line on stdout (see driver.mjs). Driven by test_viewer.py; also usable by hand:
//
//   node check_viewer.mjs http://127.0.0.1:8080/ /tmp/viewer.png [--dpr 2] [--hash LAYER/CLIENT]
//       [--style NAME] [--time VALUE]
//
// With --style or --time, the page is read once settled ("before" in the report), then the
// style and/or date are picked in the panel's selects as a user would, and read again.

import { parseArgs, printReport, runPage } from "./driver.mjs";

// Well-known places inside the viewer's initial view (zoom 2 around 20°N 0°E): their colour
// tells whether the imagery is placed where it belongs, not merely whether some picture arrived.
const PLACES = [
  { place: "south-atlantic", lat: -30, lon: -15 },
  { place: "indian-ocean", lat: -25, lon: 80 },
  { place: "north-pacific", lat: 30, lon: -125 },
  { place: "sahara", lat: 23, lon: 12 },
  { place: "arabia", lat: 22, lon: 47 },
  { place: "greenland", lat: 75, lon: -40 },
];

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node check_viewer.mjs <viewer-url> <screenshot.png> ` +
      "[--dpr N] [--hash LAYER[/CLIENT[/TILEMATRIXSET]]] [--style NAME] [--time VALUE]\n",
  );
  process.exit(2);
}

// Runs in the page: the viewer says its library has finished drawing what it loaded, or
// that something failed (a library that cannot load never gets to draw).
function viewerSettled() {
  const stats = window.viewerStats;
  return Boolean(stats && ((stats.idle && stats.loaded > 0) || stats.errors > 0));
}

// Runs in the page (Leaflet only): the colour at each place, read from the decoded tile itself.
function samplePlaces(places) {
  const tilePath = /\/tiles\/([^/]+)\/(\d+)\/(\d+)\/(\d+)(@2x)?\.(png|jpg)$/;
  const mapBox = document.getElementById("map").getBoundingClientRect();
  const tiles = [];
  for (const img of document.querySelectorAll("#map img.leaflet-tile-loaded")) {
    const match = tilePath.exec(new URL(img.src).pathname);
    if (match) tiles.push({ img, z: +match[2], x: +match[3], y: +match[4] });
  }
  return places.map(({ place, lat, lon }) => {
    const result = { place, lat, lon, tile: null, tileSize: null, screen: null, rgb: null };
    for (const { img, z, x, y } of tiles) {
      // Web Mercator: the fraction of the world's width/height at which the place lies.
      const n = 2 ** z;
      const rad = (lat * Math.PI) / 180;
      const wx = ((lon + 180) / 360) * n;
      const wy = ((1 - Math.log(Math.tan(rad) + 1 / Math.cos(rad)) / Math.PI) / 2) * n;
      if (Math.floor(wx) !== x || Math.floor(wy) !== y) continue;
      const box = img.getBoundingClientRect();
      const sx = box.left + (wx - x) * box.width;
      const sy = box.top + (wy - y) * box.height;
      // Wrapped world copies reuse a URL: take the copy that is actually on screen.
      if (sx < mapBox.left || sx >= mapBox.right || sy < mapBox.top || sy >= mapBox.bottom) {
        continue;
      }
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth;
      canvas.height = img.naturalHeight;
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(img, 0, 0);
      // Average a small patch: single JPEG pixels are noisy.
      const px = Math.floor((wx - x) * img.naturalWidth);
      const py = Math.floor((wy - y) * img.naturalHeight);
      const r = Math.max(1, Math.round(img.naturalWidth / 128));
      const x0 = Math.max(0, px - r);
      const y0 = Math.max(0, py - r);
      const w = Math.min(img.naturalWidth, px + r + 1) - x0;
      const h = Math.min(img.naturalHeight, py + r + 1) - y0;
      const data = ctx.getImageData(x0, y0, w, h).data;
      const sum = [0, 0, 0];
      for (let i = 0; i < data.length; i += 4) {
        sum[0] += data[i];
        sum[1] += data[i + 1];
        sum[2] += data[i + 2];
      }
      const count = data.length / 4;
      result.tile = new URL(img.src).pathname;
      result.tileSize = [img.naturalWidth, img.naturalHeight];
      result.screen = [Math.round(sx * 10) / 10, Math.round(sy * 10) / 10];
      result.rgb = sum.map((v) => Math.round(v / count));
      break;
    }
    return result;
  });
}

// Runs in the page: what the side panel offers, and the library files the viewer asked for.
function readPanel() {
  const box = document.getElementById("map").getBoundingClientRect();
  return {
    status: document.getElementById("status").textContent,
    libraries: [...document.head.querySelectorAll("script[src], link[rel=stylesheet]")].map(
      (element) => ({
        url: element.src || element.href,
        integrity: element.integrity,
        crossOrigin: element.crossOrigin,
      }),
    ),
    mapRect: [box.left, box.top, box.width, box.height],
    tileMatrixSets: [...document.querySelectorAll("#tms option")].map((option) => option.value),
    styles: document.getElementById("style-field").hidden
      ? []
      : [...document.querySelectorAll("#style option")].map((option) => option.value),
    times: document.getElementById("time-field").hidden
      ? []
      : [...document.querySelectorAll("#time option")].map((option) => option.value),
    snippets: Object.fromEntries(
      [...document.querySelectorAll("#snippets pre")].map((pre) => [
        pre.dataset.client,
        pre.textContent,
      ]),
    ),
  };
}

printReport("check_viewer.mjs", async () => {
  const options = parseArgs(
    process.argv.slice(2),
    { dpr: "1", hash: "", style: "", time: "" },
    usage,
  );
  if (options.positional.length !== 2) usage("expected a viewer URL and a screenshot path");
  const dpr = Number(options.dpr);
  if (!(dpr > 0)) usage("--dpr must be a positive number");
  const [url, screenshot] = options.positional;
  const target = new URL(url);
  if (options.hash) target.hash = options.hash;

  return runPage({
    url: target.href,
    screenshot,
    dpr,
    viewport: { width: 1024, height: 768 },
    ready: viewerSettled,
    inspect: async (page, report) => {
      if (options.style || options.time) {
        report.before = {
          stats: await page.evaluate(() => ({ ...window.viewerStats })),
          ...(await page.evaluate(readPanel)),
        };
        // One pick at a time, each left to settle, as a user looks before picking again
        // (a pick made while tiles load replaces the map, and the browser aborts them).
        const picks = [["#style", "style", options.style], ["#time", "time", options.time]];
        for (const [select, field, value] of picks.filter(([, , value]) => value)) {
          await page.selectOption(select, value);
          try {
            await page.waitForFunction(
              ([name, wanted]) => {
                const stats = window.viewerStats;
                return stats[name] === wanted &&
                  ((stats.idle && stats.loaded > 0) || stats.errors > 0);
              },
              [field, value],
              { timeout: 30000, polling: 100 },
            );
            // Let the last tiles' requests finish (Leaflet fades tiles in).
            await page.waitForTimeout(600);
          } catch (error) {
            report.timedOut = `after picking ${field} ${value}: ${error.message.split("\n")[0]}`;
            break;
          }
        }
      }
      report.stats = await page.evaluate(() => ({ ...window.viewerStats }));
      Object.assign(report, await page.evaluate(readPanel));
      report.samples =
        report.stats.client === "leaflet" ? await page.evaluate(samplePlaces, PLACES) : [];
    },
  });
});
