// Signaling resume in a real browser, driven by tests/browser.rs:
//
//   node tests/browser/resume.mjs <base-url> <room>
//
// One headless Chromium joins <room> through the page at <base-url> (a relay the test can
// cut). Once recorded, the test cuts the relay: the page must show "reconnecting…", resume
// its seat with its token, and clear the notice, while its media keep flowing. The last line
// on stdout is a JSON summary; progress goes to stderr.

import { launch } from './chromium.mjs';

const [base, room] = process.argv.slice(2);
const WAIT = { timeout: 20_000 };
const started = Date.now();
const log = (...args) => console.error(`[resume ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);

async function main() {
  const browser = await launch('resume');
  const errors = [];
  try {
    const { page } = browser;
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${base}/?loopback=1`);
    await page.fill('#join-room', room);
    await page.fill('#join-name', 'carol');
    await page.click('#join-btn');
    await page.waitForSelector('#call:not([hidden])', WAIT);
    await page.waitForSelector('.tile.self:not(.waiting)', WAIT);
    // The reconnect may take only a few ms: note each change of the call's signal state (and
    // the notice shown meanwhile) as it happens, rather than polling for it.
    await page.evaluate(() => {
      const call = document.querySelector('#call');
      window.signalLog = [];
      new MutationObserver(() => {
        window.signalLog.push({
          at: performance.now(),
          signal: call.dataset.signal || null,
          notice: document.querySelector('#call-notice')?.innerText || '',
        });
      }).observe(call, { attributes: true, attributeFilter: ['data-signal'] });
    });
    log('joined; waiting for the test to cut the signaling');
    await page.waitForFunction(
      () => {
        const log = window.signalLog;
        const i = log.findIndex((e) => e.signal === 'reconnecting');
        return i >= 0 && log.slice(i + 1).some((e) => e.signal === null);
      },
      null,
      { timeout: 120_000 },
    );
    const signalLog = await page.evaluate(() => window.signalLog);
    const down = signalLog.find((e) => e.signal === 'reconnecting');
    const up = signalLog.find((e) => e.signal === null && e.at >= down.at);
    const notice = down.notice;
    const reconnectMs = Math.round(up.at - down.at);
    log(`reconnecting shown (${notice}); reconnected after ${reconnectMs} ms`);
    const inCall = await page.isVisible('#call');
    // Media keep flowing for a while after the resume (the test checks the recording).
    await new Promise((r) => setTimeout(r, 3_000));
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
    process.stdout.write(JSON.stringify({ ok: true, notice, reconnect_ms: reconnectMs, in_call: inCall }) + '\n');
  } finally {
    await browser.close();
  }
}

main().catch((e) => {
  log(`FAILED: ${e.stack || e}`);
  process.stdout.write(JSON.stringify({ ok: false, error: String(e.message || e) }) + '\n');
  process.exit(1);
});
