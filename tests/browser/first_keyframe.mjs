// Time from `POST /api/recordings` to the first video keyframe on disk, with a headless
// Chromium as the participant (issue 15; a figure, not a check). Driven by tests/browser.rs
// (`chromium_first_keyframe_figures`, ignored):
//
//   node tests/browser/first_keyframe.mjs <base-url> <rounds>
//
// One Chromium joins room `fk` through the page (loopback candidates only), then each round
// creates a recording, polls it every 2 ms until its video track counts a keyframe (counted when
// the keyframe is written), and stops it. The last stdout line is a JSON summary.

import { FLAGS, launch } from './chromium.mjs';

const [base, roundsArg] = process.argv.slice(2);
if (!base) {
  console.error('usage: node first_keyframe.mjs <base-url> [rounds]');
  process.exit(64);
}
const ROUNDS = Number(roundsArg || 8);
const ROOM = 'fk';
const WAIT = { timeout: 20_000 };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function api(method, path, body) {
  const response = await fetch(`${base}${path}`, {
    method,
    headers: body ? { 'content-type': 'application/json' } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, doc: await response.json().catch(() => null) };
}

/** Milliseconds from the create call to a written video keyframe, or null after 10 s. */
async function firstKeyframe() {
  const t0 = performance.now();
  const { status, doc } = await api('POST', '/api/recordings', { room: ROOM });
  if (status !== 201 && status !== 200) throw new Error(`create: ${status} ${JSON.stringify(doc)}`);
  let ms = null;
  while (performance.now() - t0 < 10_000) {
    const { doc: rec } = await api('GET', `/api/recordings/${doc.id}`);
    if ((rec?.tracks || []).some((t) => t.kind === 'video' && t.keyframes > 0)) {
      ms = Math.round(performance.now() - t0);
      break;
    }
    await sleep(2);
  }
  await api('POST', `/api/recordings/${doc.id}/stop`, {});
  return ms;
}

async function main() {
  const { page, close } = await launch('first-keyframe', { args: FLAGS });
  try {
    await page.goto(`${base}/?loopback=1`);
    await page.fill('#join-room', ROOM);
    await page.fill('#join-name', 'chromium');
    await page.click('#join-btn');
    await page.waitForSelector('#call:not([hidden])', WAIT);
    await page.waitForSelector('.tile.self:not(.waiting)', WAIT);
    await sleep(1000);
    const figures = [];
    for (let round = 0; round < ROUNDS; round++) {
      const ms = await firstKeyframe();
      console.error(`round ${round}: first keyframe ${ms} ms after the create call`);
      if (ms === null) throw new Error(`round ${round}: no keyframe within 10 s`);
      figures.push(ms);
      await sleep(700);
    }
    const sorted = [...figures].sort((a, b) => a - b);
    console.log(JSON.stringify({
      ok: true,
      figures,
      min: sorted[0],
      median: sorted[Math.floor(sorted.length / 2)],
      max: sorted[sorted.length - 1],
    }));
  } catch (e) {
    console.log(JSON.stringify({ ok: false, error: String(e) }));
    process.exitCode = 1;
  } finally {
    await close();
  }
}

main();
