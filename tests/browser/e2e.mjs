// Real-browser end-to-end test of recbot's page, driven by tests/browser.rs:
//
//   node tests/browser/e2e.mjs <base-url> <artifact-dir>
//
// Two headless Chromium processes (Debian's /usr/bin/chromium, fake camera and microphone,
// each with a fresh profile) join one room through the page. The first one starts a
// recording with the page's button, lets it run ~10 s, stops it from the page, opens the
// recorded video in the page's player, plays it and seeks past 5 s. While recording, each
// sends a chat message through the page's chat panel. Screenshots go to
// <artifact-dir>. The last line on stdout is a JSON summary; progress goes to stderr.
//
// Network: the page is opened with `?loopback=1`, so it keeps only loopback ICE candidates;
// the flags below keep Chromium itself from calling out. Only 127.0.0.1 is contacted.

import { FLAGS as SHARED_FLAGS, launch } from './chromium.mjs';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

const [base, artifacts] = process.argv.slice(2);
if (!base || !artifacts) {
  console.error('usage: node e2e.mjs <base-url> <artifact-dir>');
  process.exit(64);
}
const ROOM = 'e2e';
const RECORD_MS = 10_000;
const WAIT = { timeout: 20_000 };

const FLAGS = [...SHARED_FLAGS, '--autoplay-policy=no-user-gesture-required'];

const started = Date.now();
const timings = {};
const log = (...args) => console.error(`[e2e ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A Chromium process with its own fresh profile, and its page (console and file responses kept). */
async function launchAs(name) {
  const { profile, context, page, close } = await launch(`e2e-${name}`, {
    args: FLAGS,
    viewport: { width: 1280, height: 860 },
    deviceScaleFactor: 1,
  });
  const lines = [];
  page.on('console', (m) => lines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => lines.push(`[pageerror] ${e.message}`));
  const responses = [];
  page.on('response', (r) => {
    if (r.url().includes('/files/')) responses.push({ url: r.url(), status: r.status() });
  });
  return { name, profile, context, page, lines, responses, close };
}

async function joinRoom(b) {
  await b.page.goto(`${base}/?loopback=1`);
  await b.page.fill('#join-room', ROOM);
  await b.page.fill('#join-name', b.name);
  await b.page.click('#join-btn');
  await b.page.waitForSelector('#call:not([hidden])', WAIT);
  await b.page.waitForSelector('.tile.self:not(.waiting)', WAIT);
}

/** Waits until `b` shows `n` remote tiles, connected, with moving video. */
async function waitRemoteVideo(b, n) {
  await b.page.waitForFunction(
    (n) => {
      const tiles = [...document.querySelectorAll('.tile.remote')];
      return (
        tiles.length === n &&
        tiles.every((t) => {
          const v = t.querySelector('video');
          return t.dataset.state === 'connected' && v.videoWidth > 0 && v.currentTime > 0.5;
        })
      );
    },
    n,
    WAIT,
  );
}

async function shot(b, file) {
  const path = join(artifacts, file);
  await b.page.screenshot({ path });
  log(`screenshot ${path}`);
}

async function main() {
  await mkdir(artifacts, { recursive: true });
  const browsers = [];
  try {
    const [alice, bob] = await Promise.all([launchAs('alice'), launchAs('bob')]);
    browsers.push(alice, bob);
    timings.launched_s = (Date.now() - started) / 1000;
    log('browsers up');

    await joinRoom(alice);
    await joinRoom(bob);
    await Promise.all([waitRemoteVideo(alice, 1), waitRemoteVideo(bob, 1)]);
    timings.connected_s = (Date.now() - started) / 1000;
    log('alice and bob see each other');
    await shot(alice, 'room-joined.png');

    // Start recording with the page's own button.
    const roomField = await alice.page.inputValue('#rec-room');
    if (roomField !== ROOM) throw new Error(`recordings form room is ${roomField}, expected ${ROOM}`);
    const ids = () => alice.page.$$eval('.rec-card', (els) => els.map((e) => e.dataset.id));
    const before = await ids();
    await alice.page.click('#rec-start');
    const t0 = Date.now();
    const newCard = await alice.page.waitForFunction(
      (before) => [...document.querySelectorAll('.rec-card')].find((e) => !before.includes(e.dataset.id))?.dataset.id,
      before,
      WAIT,
    );
    const recordingId = await newCard.jsonValue();
    const card = alice.page.locator(`.rec-card[data-id="${recordingId}"]`);
    log(`recording ${recordingId} started`);

    // Both pages show the indicator, driven by the `recording` message.
    await alice.page.waitForSelector('#call-rec:not([hidden])', WAIT);
    await bob.page.waitForSelector('#call-rec:not([hidden])', WAIT);

    // The list fills in with live figures: 4 tracks (2 people x audio + video).
    await alice.page.waitForFunction(
      (id) => {
        const c = document.querySelector(`.rec-card[data-id="${id}"]`);
        return c && c.dataset.state === 'recording' && c.querySelectorAll('table.tracks tbody tr').length === 4;
      },
      recordingId,
      WAIT,
    );
    const figures = () => card.locator('.figures').innerText();
    const early = await figures();

    // Chat through the page's panel: each message goes over the `chat` DataChannels to the
    // other browser and to the recorder (which writes chat.jsonl). Non-ASCII on purpose.
    const chat = [];
    for (const [from, to, text] of [
      [alice, bob, 'héllo 🌍 — "quoted" from alice'],
      [bob, alice, 'ça va ? ✓ bob'],
    ]) {
      const sentMs = Date.now() - t0;
      await from.page.fill('#chat-text', text);
      await from.page.press('#chat-text', 'Enter');
      await to.page.waitForFunction(
        (text) => [...document.querySelectorAll('#chat-log .chat-line')].some((li) => li.textContent.endsWith(text)),
        text,
        WAIT,
      );
      chat.push({ from: from.name, text, sent_ms: sentMs });
    }
    log('chat crossed both ways');

    // A second start for the same room is refused: the page shows the API's 409.
    await alice.page.click('#rec-start');
    await alice.page.waitForSelector('#rec-notice:not([hidden])', WAIT);
    const conflict = await alice.page.innerText('#rec-notice');
    if (!conflict.includes('409')) throw new Error(`expected a 409 message, got: ${conflict}`);
    log(`conflict shown: ${conflict}`);

    await sleep(Math.max(0, t0 + 5_000 - Date.now()));
    await shot(alice, 'recording.png');
    await sleep(Math.max(0, t0 + RECORD_MS - Date.now()));
    const late = await figures();
    if (late === early) throw new Error(`live figures did not change: ${late}`);

    // Stop from the page.
    await card.locator('.card-actions button', { hasText: 'Stop' }).click();
    await alice.page.waitForSelector(`.rec-card[data-id="${recordingId}"][data-state="stopped"]`, WAIT);
    const recordedMs = Date.now() - t0;
    timings.recorded_s = recordedMs / 1000;
    await bob.page.waitForSelector('#call-rec[hidden]', { ...WAIT, state: 'attached' });
    log(`stopped after ${recordedMs} ms`);

    const files = await card.locator('.file').evaluateAll((els) => els.map((e) => e.dataset.file));
    const videoFile = files.find((f) => f.startsWith('alice-video') && f.endsWith('.webm'));
    const audioFile = files.find((f) => f.startsWith('alice-audio') && f.endsWith('.ogg'));
    if (!videoFile || !audioFile) throw new Error(`alice's files are missing: ${files.join(', ')}`);

    // The recorded audio loads in the page's player.
    await card.locator(`.file[data-file="${audioFile}"] button`, { hasText: 'Play' }).click();
    const audioDuration = await alice.page.evaluate(async () => {
      const el = document.querySelector('#player audio');
      if (el.readyState < 1) await new Promise((r, j) => {
        el.addEventListener('loadedmetadata', r, { once: true });
        el.addEventListener('error', () => j(new Error('audio error')), { once: true });
      });
      return el.duration;
    });
    await alice.page.click('#player .dialog-head button');

    // The recorded video plays and seeks in the page's player.
    await card.locator(`.file[data-file="${videoFile}"] button`, { hasText: 'Play' }).click();
    await alice.page.waitForSelector('#player[open] video', WAIT);
    const playback = await alice.page.evaluate(async () => {
      const el = document.querySelector('#player video');
      const until = (cond, what, ms = 15_000) =>
        new Promise((resolve, reject) => {
          const end = Date.now() + ms;
          const tick = () => {
            if (el.error) return reject(new Error(`video error ${el.error.code}: ${el.error.message}`));
            if (cond()) return resolve();
            if (Date.now() > end) return reject(new Error(`timed out waiting for ${what}`));
            setTimeout(tick, 50);
          };
          tick();
        });
      await until(() => el.readyState >= 1, 'metadata');
      const duration = el.duration;
      await el.play();
      await until(() => el.currentTime > 1, 'playback');
      const played = el.currentTime;
      el.currentTime = 7;
      await until(() => !el.seeking && el.currentTime >= 7, 'the seek');
      const seeked = el.currentTime;
      await until(() => el.currentTime > seeked + 0.3, 'playback after the seek');
      return { duration, played, seeked, after: el.currentTime, width: el.videoWidth, height: el.videoHeight };
    });
    log('playback', JSON.stringify(playback));
    if (!(playback.after > 5)) throw new Error(`currentTime ${playback.after} is not past 5 s`);
    await shot(alice, 'playback.png');
    await alice.page.click('#player .dialog-head button');
    const ranges = alice.responses.filter((r) => r.status === 206).length;

    // Bots panel: an echo bot started from the page sends alice her own media back (the
    // bot is the polite side); stopped from the page, its tile goes. A server without the
    // bots API must show its error instead.
    await alice.page.click('#tab-bots');
    await alice.page.waitForSelector('#bot-list .empty, #bot-list .bot-card, #bot-notice:not([hidden])', WAIT);
    let bots = { api: true };
    if (await alice.page.isVisible('#bot-notice')) {
      bots = { api: false, message: await alice.page.innerText('#bot-notice') };
      if (!bots.message.includes('404')) throw new Error(`bots panel: ${bots.message}`);
      await shot(alice, 'bots.png');
    } else {
      await alice.page.selectOption('#bot-mode', 'echo');
      await alice.page.click('#bot-start');
      const botCard = alice.page.locator('.bot-card[data-state="running"]').first();
      await botCard.waitFor(WAIT);
      bots.id = await botCard.getAttribute('data-id');
      await alice.page.waitForFunction(
        () => {
          const t = document.querySelector('.tile.remote.bot');
          const v = t?.querySelector('video');
          return t?.dataset.state === 'connected' && v.videoWidth > 0 && v.currentTime > 0.5;
        },
        null,
        WAIT,
      );
      log(`echo bot ${bots.id} sends alice's media back`);
      await shot(alice, 'bots.png');
      await botCard.locator('.card-actions button', { hasText: 'Stop' }).click();
      await alice.page.waitForFunction(() => !document.querySelector('.tile.remote.bot'), null, WAIT);
      bots.stopped = true;
    }
    await alice.page.click('#tab-recordings');

    const ice = {};
    for (const b of browsers) ice[b.name] = await b.page.evaluate(() => ({ ...window.recbotIceStats }));

    // Leaving: bob leaves, alice's page drops his tile.
    await bob.page.click('#leave-btn');
    await bob.page.waitForSelector('#join-form:not([hidden])', WAIT);
    await alice.page.waitForFunction(() => document.querySelectorAll('.tile.remote').length === 0, null, WAIT);
    await alice.page.click('#leave-btn');
    await alice.page.waitForSelector('#join-form:not([hidden])', WAIT);
    log('both left');

    const errors = browsers.flatMap((b) => b.lines.filter((l) => l.startsWith('[pageerror]')).map((l) => `${b.name}: ${l}`));
    if (errors.length) throw new Error(`page errors: ${errors.join('; ')}`);
    timings.total_s = (Date.now() - started) / 1000;
    const summary = {
      ok: true,
      recording_id: recordingId,
      room: ROOM,
      files,
      video_file: videoFile,
      audio_file: audioFile,
      recorded_ms: recordedMs,
      audio_duration_s: audioDuration,
      playback,
      range_responses_206: ranges,
      conflict_message: conflict,
      chat,
      figures: { early, late },
      bots,
      ice,
      timings,
    };
    process.stdout.write(JSON.stringify(summary) + '\n');
  } catch (e) {
    for (const b of browsers) {
      await b.page.screenshot({ path: join(artifacts, `failure-${b.name}.png`) }).catch(() => {});
    }
    throw e;
  } finally {
    for (const b of browsers) {
      await writeFile(join(artifacts, `console-${b.name}.log`), b.lines.join('\n') + '\n').catch(() => {});
      await b.close();
    }
  }
}

main().catch((e) => {
  log(`FAILED: ${e.stack || e}`);
  process.stdout.write(JSON.stringify({ ok: false, error: String(e.message || e) }) + '\n');
  process.exit(1);
});
