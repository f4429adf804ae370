// Drive the generation page in headless Chromium: open URL (index.html?prompt=...&tokens=N), wait
// until the page sets document.title to "done" or "error: ...", print {title, output, stats} as
// JSON (with the page's token rates and whether it was cross-origin isolated) and save a screenshot.
//
//   node web/test/page.mjs URL SCREENSHOT.png [CHROMIUM]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const [url, screenshot, executablePath = "/usr/bin/chromium"] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), "rnnquant-chromium-"));
// a fresh profile, no background networking: on a closed network Chromium's own connections pile up
const context = await chromium.launchPersistentContext(profile, {
  executablePath, headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-quic"],
});
try {
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e.message).split("\n")[0]));
  const outside = [];
  page.on("request", (r) => { if (!r.url().startsWith(new URL(url).origin)) outside.push(r.url()); });
  await page.goto(url);
  await page.waitForFunction(() => document.title === "done" || document.title.startsWith("error"), null, { timeout: 240_000 });
  await page.screenshot({ path: screenshot, fullPage: true });
  console.log(JSON.stringify({
    title: await page.title(), output: await page.textContent("#output"), stats: await page.textContent("#stats"),
    rates: await page.evaluate(() => window.rnnquantStats ?? null), isolated: await page.evaluate(() => self.crossOriginIsolated),
    errors, outside,
  }));
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
