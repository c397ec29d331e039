// What the browser test drivers share (check_viewer.mjs here, and
// tests/interop/browser/check_page.mjs): open one page in headless Debian Chromium through
// playwright-core, record its network traffic and console, wait until the page says it is
// done and the network has gone quiet, then hand the page to the caller for its own readings.
//
// Nothing leaves the machine: only the page's own origin and the allowed ones, all on
// loopback, are reached; every other request is aborted and listed in the report's
// blockedRequests, so a test sees any attempt to go off-site (a CDN, a font, a telemetry ping).
//
// The report is printed as ONE JSON line on stdout with exit status 0 even for a broken page:
// the verdict belongs to the Python test, which needs the whole report to explain a failure.

import { writeFile } from "node:fs/promises";
import path from "node:path";

import { chromium } from "playwright-core";

const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const TIMEOUT_MS = Number(process.env.BROWSER_TIMEOUT_MS || 30000);
// Libraries fade tiles in (Leaflet 200 ms) and may ask for more once one is shown, so the
// network has to stay quiet a little longer than that before the picture counts as final.
const QUIET_MS = 500;
// Chromium sends everything but loopback through this proxy, where nothing listens: should a
// request slip past the route below (a worker's, a prefetch), it fails instead of going out.
const NOWHERE_PROXY = "http://127.0.0.1:9";

/** 127.0.0.0/8, localhost or [::1]: the only hosts a page under test may reach. */
export function isLoopback(url) {
  const { hostname } = new URL(url);
  return hostname === "localhost" || hostname === "[::1]" || /^127(\.\d{1,3}){3}$/.test(hostname);
}

/** Command line: positional arguments plus `--name value` options with the given defaults. */
export function parseArgs(argv, defaults, usage) {
  const options = { ...defaults, positional: [] };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg.startsWith("--")) {
      const name = arg.slice(2);
      if (!(name in defaults)) usage(`unknown option ${arg}`);
      if (i + 1 >= argv.length) usage(`${arg} needs a value`);
      const value = argv[(i += 1)];
      options[name] = Array.isArray(defaults[name]) ? [...options[name], value] : value;
    } else {
      options.positional.push(arg);
    }
  }
  return options;
}

/**
 * Opens `url` and returns the report. `allowedOrigins` may be fetched for real (the page's own
 * origin always is); they and the page must be on loopback. Anything else is blocked.
 * `ready` runs in the page (polled) until true; `inspect(page, report)` then adds its
 * readings to the report, before the screenshot is taken. With `record` (a directory), every
 * response's headers go into its request's entry and its body into a file there (`body`: the
 * file's name), so the caller can scan all the browser received.
 */
export async function runPage({
  url,
  screenshot,
  dpr = 1,
  viewport,
  allowedOrigins = [],
  ready,
  inspect,
  record = null,
}) {
  const target = new URL(url);
  const allowed = new Set([target.origin, ...allowedOrigins.map((other) => new URL(other).origin)]);
  for (const origin of allowed) {
    if (!isLoopback(origin)) throw new Error(`${origin} is not on loopback: refusing to reach it`);
  }
  const report = {
    url: target.href,
    dpr,
    browser: null,
    timedOut: null,
    consoleErrors: [],
    failedRequests: [],
    blockedRequests: [],
    // One entry per finished request: what the URL and CORS checks need.
    requests: [],
    screenshot: null,
  };
  const pending = [];

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
        // WebGL (MapLibre) on the software rasteriser, which newer Chromiums no longer pick
        // by themselves.
        "--enable-unsafe-swiftshader",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        `--proxy-server=${NOWHERE_PROXY}`,
      ],
      timeout: TIMEOUT_MS,
    });
    report.browser = browser.version();
    const context = await browser.newContext({ viewport, deviceScaleFactor: dpr });
    const page = await context.newPage();

    let inFlight = 0;
    let lastActivity = Date.now();
    const settle = () => {
      inFlight -= 1;
      lastActivity = Date.now();
    };
    page.on("request", () => {
      inFlight += 1;
      lastActivity = Date.now();
    });
    page.on("requestfinished", (request) => {
      settle();
      pending.push(describe(request, report, record && path.join(record, `${pending.length}`)));
    });
    page.on("requestfailed", (request) => {
      settle();
      report.failedRequests.push(`${request.url()}: ${request.failure()?.errorText}`);
    });
    page.on("response", (response) => {
      if (response.status() >= 400) {
        report.failedRequests.push(`${response.url()}: HTTP ${response.status()}`);
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
    // On the context, not the page: requests of workers and popups are caught too.
    await context.route(
      (candidate) => !allowed.has(candidate.origin),
      async (route) => {
        // Refused at once: a failed request explains itself, a hang on a host does not.
        report.blockedRequests.push(route.request().url());
        await route.abort("blockedbyclient");
      },
    );

    await page.goto(target.href, { waitUntil: "load", timeout: TIMEOUT_MS });
    const deadline = Date.now() + TIMEOUT_MS;
    try {
      await page.waitForFunction(ready, null, {
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
    await inspect(page, report);
    await page.screenshot({ path: screenshot, animations: "disabled" });
    report.screenshot = path.resolve(screenshot);
    report.requests = await Promise.all(pending);
  } finally {
    await browser?.close().catch(() => {});
  }
  return report;
}

async function describe(request, report, bodyFile) {
  const url = new URL(request.url());
  const entry = {
    url: request.url(),
    path: url.pathname,
    query: url.search,
    resourceType: request.resourceType(),
    origin: null,
    status: null,
    contentType: null,
    allowOrigin: null,
    cacheControl: null,
    xCache: null,
  };
  try {
    entry.origin = (await request.allHeaders()).origin ?? null;
    const response = await request.response();
    if (response) {
      const headers = await response.allHeaders();
      entry.status = response.status();
      entry.contentType = headers["content-type"] ?? null;
      entry.allowOrigin = headers["access-control-allow-origin"] ?? null;
      entry.cacheControl = headers["cache-control"] ?? null;
      entry.xCache = headers["x-cache"] ?? null;
      if (bodyFile) {
        entry.headers = headers;
        await writeFile(bodyFile, await response.body());
        entry.body = path.basename(bodyFile);
      }
    }
  } catch (error) {
    // Say so rather than lose the request from the report.
    report.failedRequests.push(`${request.url()}: headers unreadable (${error.message})`);
  }
  return entry;
}

/** Runs `main`, printing its report as one JSON line; a crash exits 1 with the stack. */
export function printReport(name, main) {
  main()
    .then((report) => process.stdout.write(`${JSON.stringify(report)}\n`))
    .catch((error) => {
      process.stderr.write(`${name} crashed: ${error.stack || error}\n`);
      process.exit(1);
    });
}
