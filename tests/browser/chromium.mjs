// What every browser test shares: Debian's Chromium (or RECBOT_CHROMIUM) and the flags that
// run it headless with fake camera and microphone, loopback peer connections allowed, and
// nothing called out to (any host name but 127.0.0.1 resolves to nothing).

import { chromium } from 'playwright-core';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** The Chromium binary. */
export const CHROMIUM = process.env.RECBOT_CHROMIUM || '/usr/bin/chromium';

/** Command-line flags of every test's Chromium. */
export const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-domain-reliability',
  '--disable-client-side-phishing-detection',
  '--no-pings',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
];

/**
 * A Chromium process with a fresh profile (named after `label`) and its first page. Requests to
 * anything but 127.0.0.1 are refused. `options` go to playwright's launch (viewport, args...).
 * `close()` ends the process and removes the profile; it never throws.
 */
export async function launch(label, options = {}) {
  const profile = await mkdtemp(join(tmpdir(), `recbot-${label}-`));
  let context;
  try {
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: FLAGS,
      ...options,
    });
    await context.route(/^(?!https?:\/\/127\.0\.0\.1[:/]).*/, (route) => route.abort());
    const page = context.pages()[0] || (await context.newPage());
    const close = async () => {
      await context.close().catch(() => {});
      await rm(profile, { recursive: true, force: true }).catch(() => {});
    };
    return { profile, context, page, close };
  } catch (e) {
    if (context) await context.close().catch(() => {});
    await rm(profile, { recursive: true, force: true }).catch(() => {});
    throw e;
  }
}
