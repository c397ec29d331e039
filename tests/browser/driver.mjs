// What the browser test drivers share (check_viewer.mjs here, and
// tests/interop/browser/check_page.mjs): open one page in headless Debian Chromium through
// playwright-core, record its network traffic and console, wait until the page says it is
// done and the network has gone quiet, then hand the page to the caller for its own readings.
//
// The report is printed as ONE JSON line on stdout with exit status 0 even for a broken page:
// the verdict belongs to the Python test, which needs the whole report to explain a failure.

import { existsSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

import { chromium } from "playwright-core";

export const NODE_MODULES = path.join(path.dirname(fileURLToPath(import.meta.url)), "node_modules");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const TIMEOUT_MS = Number(process.env.BROWSER_TIMEOUT_MS || 30000);
// Libraries fade tiles in (Leaflet 200 ms) and may ask for more once one is shown, so the
// network has to stay quiet a little longer than that before the picture counts as final.
const QUIET_MS = 500;

const CONTENT_TYPES = {
  ".js": "application/javascript; charset=utf-8",
  ".css": "text/css; charset=utf-8",
  ".png": "image/png",
  ".map": "application/json",
};

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
 * The machine has no internet: answer `https://unpkg.com/<package>@<version>/<file>` from the
 * installed npm package, byte for byte, so the page's SRI hashes still verify. A version other
 * than the installed one is refused like any other off-site URL: the page pins what the lock
 * file installs, or its test fails.
 */
function unpkgFile(url) {
  const match = /^https:\/\/unpkg\.com\/((?:@[^/]+\/)?[^@/]+)@([^/]+)\/(.+)$/.exec(
    url.origin + url.pathname,
  );
  if (!match) return null;
  const [, name, version, file] = match;
  const root = path.join(NODE_MODULES, name);
  const manifest = path.join(root, "package.json");
  if (!existsSync(manifest) || JSON.parse(readFileSync(manifest, "utf8")).version !== version) {
    return null;
  }
  const resolved = path.resolve(root, file);
  return resolved.startsWith(root + path.sep) && existsSync(resolved) ? resolved : null;
}

async function answerOffsite(route, report) {
  const file = unpkgFile(new URL(route.request().url()));
  if (file === null) {
    // Refused at once: a failed request explains itself, a hang on an unreachable host does not.
    report.blockedRequests.push(route.request().url());
    await route.abort("blockedbyclient");
    return;
  }
  await route.fulfill({
    status: 200,
    body: readFileSync(file),
    headers: {
      "Content-Type": CONTENT_TYPES[path.extname(file)] || "application/octet-stream",
      // The page loads libraries with crossorigin: without CORS the SRI check fails.
      "Access-Control-Allow-Origin": "*",
    },
  });
}

/**
 * Opens `url` and returns the report. `allowedOrigins` may be fetched for real (the page's own
 * origin always is); unpkg.com URLs are answered from node_modules; anything else is blocked.
 * `ready` runs in the page (polled) until true; `inspect(page, report)` then adds its
 * readings to the report, before the screenshot is taken.
 */
export async function runPage({
  url,
  screenshot,
  dpr = 1,
  viewport,
  allowedOrigins = [],
  ready,
  inspect,
}) {
  const target = new URL(url);
  const allowed = new Set([target.origin, ...allowedOrigins]);
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
      pending.push(describe(request, report));
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
    await page.route(
      (candidate) => !allowed.has(candidate.origin),
      (route) => answerOffsite(route, report),
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

async function describe(request, report) {
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
      entry.xCache = headers["x-cache"] ?? null;
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
