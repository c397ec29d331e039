#!/usr/bin/env node
// Opens one test page of pages/ (served from another origin than the gateway) in headless
// Debian Chromium, in a 512 x 512 viewport, and reports what it saw as ONE JSON line on
// stdout (see tests/browser/driver.mjs). Driven by test_map_clients.py; by hand:
//
//   node check_page.mjs 'http://127.0.0.1:8081/leaflet.html?gw=...' /tmp/shot.png \
//        --allow http://127.0.0.1:8080 [--dpr 2] [--record DIR]
//
// --record DIR also keeps every response's headers (in the report) and body (a file in DIR).

import { parseArgs, printReport, runPage } from "../../browser/driver.mjs";

function usage(message) {
  process.stderr.write(
    `${message}\nusage: node check_page.mjs <page-url> <screenshot.png> ` +
      "[--dpr N] [--allow ORIGIN]... [--record DIR]\n",
  );
  process.exit(2);
}

printReport("check_page.mjs", async () => {
  const options = parseArgs(process.argv.slice(2), { dpr: "1", allow: [], record: "" }, usage);
  if (options.positional.length !== 2) usage("expected a page URL and a screenshot path");
  const dpr = Number(options.dpr);
  if (!(dpr > 0)) usage("--dpr must be a positive number");
  const [url, screenshot] = options.positional;
  return runPage({
    url,
    screenshot,
    dpr,
    viewport: { width: 512, height: 512 },
    allowedOrigins: options.allow,
    record: options.record || null,
    ready: () => window.pageStats?.done === true,
    inspect: async (page, report) => {
      report.stats = await page.evaluate(() => window.pageStats);
    },
  });
});
