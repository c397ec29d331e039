#!/usr/bin/env node
// Opens the gateway's viewer page in headless Debian Chromium and reports what it saw as ONE
// JSON line on stdout. Driven by test_viewer.py; also usable by hand:
//
//   node check_viewer.mjs http://127.0.0.1:8080/ /tmp/viewer.png [--dpr 2] [--layer NAME]
//
// Exit status is 0 whenever a report was printed, even for a broken page: the verdict belongs
// to the caller, which needs the whole report to explain a failure.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const LEAFLET_CDN = "https://unpkg.com/leaflet@1.9.4/dist/";
const LEAFLET_DIST = path.join(HERE, "node_modules", "leaflet", "dist");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const TIMEOUT_MS = Number(process.env.VIEWER_TIMEOUT_MS || 30000);
// Leaflet fades tiles in over 200 ms and the page may fetch more once a tile is shown, so the
// network has to stay quiet a little longer than that before the picture counts as final.
const QUIET_MS = 500;
const TILE_PATH = /\/tiles\/([^/]+)\/(\d+)\/(\d+)\/(\d+)(@2x)?\.(png|jpg)$/;

// Well-known places inside the initial view (zoom 2 around 20°N 0°E): their colour tells
// whether the imagery is placed where it belongs, not merely whether some picture arrived.
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
      "[--dpr N] [--layer NAME]\n",
  );
  process.exit(2);
}

function parseArgs(argv) {
  const positional = [];
  const options = { dpr: 1, layer: null };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === "--dpr" || arg === "--layer") {
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      options[arg.slice(2)] = argv[(i += 1)];
    } else if (arg.startsWith("--")) {
      usage(`unknown option ${arg}`);
    } else {
      positional.push(arg);
    }
  }
  if (positional.length !== 2) usage("expected a viewer URL and a screenshot path");
  options.dpr = Number(options.dpr);
  if (!(options.dpr > 0)) usage("--dpr must be a positive number");
  [options.url, options.screenshot] = positional;
  return options;
}

const CONTENT_TYPES = {
  ".js": "application/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".png": "image/png",
  ".map": "application/json",
};

// The machine has no internet: answer the viewer's CDN URLs from the npm package, byte for
// byte, so the page's SRI hashes still verify. Anything else off the gateway is refused, which
// surfaces as a failed request instead of a hang on an unreachable host.
async function routeOffsite(route, blocked) {
  const url = new URL(route.request().url());
  const href = url.origin + url.pathname;
  if (href.startsWith(LEAFLET_CDN)) {
    const file = path.resolve(LEAFLET_DIST, href.slice(LEAFLET_CDN.length));
    if (file.startsWith(LEAFLET_DIST + path.sep) && existsSync(file)) {
      await route.fulfill({
        status: 200,
        body: readFileSync(file),
        headers: {
          "Content-Type": CONTENT_TYPES[path.extname(file)] || "application/octet-stream",
          // The page loads Leaflet with crossorigin="": without CORS the SRI check fails.
          "Access-Control-Allow-Origin": "*",
        },
      });
      return;
    }
  }
  blocked.push(route.request().url());
  await route.abort("blockedbyclient");
}

// Runs in the page: true once every tile image Leaflet shows has finished and faded in.
function tilesSettled() {
  const stats = window.viewerStats;
  if (!stats || stats.loaded <= 0) return false;
  const tiles = [...document.querySelectorAll("#map img.leaflet-tile")];
  return tiles.every(
    (img) =>
      img.complete &&
      (img.naturalWidth === 0 ||
        (img.classList.contains("leaflet-tile-loaded") && getComputedStyle(img).opacity === "1")),
  );
}

// Runs in the page: the colour at each place, read from the decoded tile image itself.
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

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const target = new URL(options.url);
  if (options.layer !== null) target.hash = encodeURIComponent(options.layer);
  const origin = target.origin;

  const report = {
    url: target.href,
    dpr: options.dpr,
    layer: null,
    loaded: 0,
    errors: 0,
    consoleErrors: [],
    failedRequests: [],
    blockedRequests: [],
    tileRequests: 0,
    tiles: [],
    sampleRgb: [],
    samples: [],
    mapRect: null,
    screenshot: null,
    timedOut: null,
    browser: null,
  };

  let browser;
  try {
    // launch() gives Chromium a fresh temporary profile and deletes it on close, so nothing
    // from a previous run (HTTP cache, service workers) leaks into this one.
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
      timeout: TIMEOUT_MS,
    });
    report.browser = browser.version();
    const context = await browser.newContext({
      viewport: { width: 1024, height: 768 },
      deviceScaleFactor: options.dpr,
    });
    const page = await context.newPage();

    let inFlight = 0;
    let lastActivity = Date.now();
    const settle = () => {
      inFlight -= 1;
      lastActivity = Date.now();
    };
    page.on("request", (request) => {
      inFlight += 1;
      lastActivity = Date.now();
      if (TILE_PATH.test(new URL(request.url()).pathname)) report.tileRequests += 1;
    });
    page.on("requestfinished", settle);
    page.on("requestfailed", (request) => {
      settle();
      report.failedRequests.push(`${request.url()}: ${request.failure()?.errorText}`);
    });
    page.on("response", async (response) => {
      const url = new URL(response.url());
      if (response.status() >= 400) {
        report.failedRequests.push(`${response.url()}: HTTP ${response.status()}`);
      }
      if (TILE_PATH.test(url.pathname)) {
        const headers = await response.allHeaders().catch(() => ({}));
        report.tiles.push({
          path: url.pathname,
          status: response.status(),
          contentType: headers["content-type"] ?? null,
          xCache: headers["x-cache"] ?? null,
        });
      }
    });
    page.on("console", (message) => {
      if (message.type() === "error") {
        const where = message.location();
        report.consoleErrors.push(
          `${message.text()}${where?.url ? ` (${where.url}:${where.lineNumber})` : ""}`,
        );
      }
    });
    page.on("pageerror", (error) => report.consoleErrors.push(`uncaught: ${error.message}`));
    await page.route((url) => url.origin !== origin, (route) =>
      routeOffsite(route, report.blockedRequests),
    );

    await page.goto(target.href, { waitUntil: "load", timeout: TIMEOUT_MS });
    const deadline = Date.now() + TIMEOUT_MS;
    try {
      await page.waitForFunction(tilesSettled, null, {
        timeout: Math.max(1, deadline - Date.now()),
        polling: 100,
      });
      while (inFlight > 0 || Date.now() - lastActivity < QUIET_MS) {
        if (Date.now() > deadline) throw new Error(`${inFlight} request(s) still in flight`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    } catch (error) {
      // Still report (and screenshot) what is there: a half-loaded map explains a failure.
      report.timedOut = `after ${TIMEOUT_MS} ms: ${error.message.split("\n")[0]}`;
    }

    Object.assign(report, await page.evaluate(() => ({ ...window.viewerStats })));
    report.mapRect = await page.evaluate(() => {
      const box = document.getElementById("map").getBoundingClientRect();
      return [box.left, box.top, box.width, box.height];
    });
    report.samples = await page.evaluate(samplePlaces, PLACES);
    report.sampleRgb = report.samples.map((sample) => sample.rgb);
    await page.screenshot({ path: options.screenshot, animations: "disabled" });
    report.screenshot = path.resolve(options.screenshot);
  } finally {
    await browser?.close().catch(() => {});
  }
  process.stdout.write(`${JSON.stringify(report)}\n`);
}

main().catch((error) => {
  process.stderr.write(`check_viewer.mjs crashed: ${error.stack || error}\n`);
  process.exit(1);
});
