// A browser renegotiating toward the recorder, driven by tests/browser.rs:
//
//   node tests/browser/renego.mjs <base-url> <room>
//
// One headless Chromium (Debian's /usr/bin/chromium, fake camera and microphone, a fresh
// profile) opens a page on the server's origin and runs a minimal signaling client of its own
// inside it: it joins <room> with its camera and microphone, starts a recording of the room
// through the API, so that the recorder bot offers to it (the browser answers, and so holds the
// active DTLS role), and waits until the recording receives its video. Then it renegotiates
// toward the recorder twice, each time with a new offer of its own: `pc.restartIce()` (new ICE
// credentials), then an added canvas video track. For each it reports whether the recorder's
// answer was accepted, the signaling and connection states after it, the answer's `a=setup`
// lines, and the recording's live figures. The recording is left running: the Rust test stops
// it and checks its files. The last line on stdout is a JSON summary; progress goes to stderr.
//
// Network: only loopback ICE candidates are used or sent (the same rule as the page's
// `?loopback=1` aid), and the flags keep Chromium from calling out. Only 127.0.0.1 is contacted.

import { launch } from './chromium.mjs';

const [base, room] = process.argv.slice(2);
if (!base || !room) {
  console.error('usage: node renego.mjs <base-url> <room>');
  process.exit(64);
}
// Longest the in-page part may take (the Rust test has its own, longer, limit).
const PAGE_TIMEOUT_MS = 60_000;


const started = Date.now();
const log = (...args) => console.error(`[renego ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);

/** The in-page client. Runs inside Chromium; returns the summary (or throws). */
async function inPage({ room }) {
  const STEP_MS = 15_000;
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const isLoopback = (line) => {
    const f = String(line || '').replace(/^a=/, '').trim().split(/\s+/);
    const a = (f[4] || '').replace(/^\[|\]$/g, '').toLowerCase();
    return f.length >= 8 && (/^127\.\d+\.\d+\.\d+$/.test(a) || a === '::1');
  };
  const filterSdp = (sdp) =>
    sdp.split('\r\n').filter((l) => !l.startsWith('a=candidate:') || isLoopback(l)).join('\r\n');
  const setupLines = (sdp) => [...new Set(sdp.split('\r\n').filter((l) => l.startsWith('a=setup:')))];
  const until = async (cond, what, ms = STEP_MS) => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await cond();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(100);
    }
  };

  const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/rooms/${room}/ws?name=renego`);
  const inbox = [];
  const waiters = [];
  ws.onmessage = (e) => {
    const msg = JSON.parse(e.data);
    inbox.push(msg);
    for (const w of waiters.splice(0)) w();
  };
  const send = (msg) => ws.send(JSON.stringify(msg));
  /** The next message matching `pred` (messages are consumed in order). */
  const next = async (pred, what, ms = STEP_MS) => {
    const end = Date.now() + ms;
    for (;;) {
      const i = inbox.findIndex(pred);
      if (i >= 0) return inbox.splice(i, 1)[0];
      const left = end - Date.now();
      if (left <= 0) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => {
        waiters.push(r);
        setTimeout(r, left);
      });
    }
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('websocket error'));
  });
  const welcome = await next((m) => m.type === 'welcome', 'the welcome');

  // Joined first: the recorder that joins next offers to us.
  const api = async (method, path, body) => {
    const r = await fetch(path, {
      method,
      headers: body ? { 'content-type': 'application/json' } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
    const json = await r.json();
    if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${JSON.stringify(json)}`);
    return json;
  };
  const rec = await api('POST', '/api/recordings', { room });
  const recorder = rec.bot_peer;

  const pc = new RTCPeerConnection({ iceServers: [] });
  const states = [];
  pc.onconnectionstatechange = () => states.push(pc.connectionState);
  pc.onicecandidate = ({ candidate }) => {
    if (candidate && !isLoopback(candidate.candidate)) return;
    send({ type: 'candidate', to: recorder, candidate: candidate ? candidate.toJSON() : null });
  };
  // Candidates from the recorder, applied as they come (after the remote description).
  let remoteSet = false;
  const pending = [];
  const addCandidate = async (c) => {
    if (!c || !c.candidate) return;
    if (!isLoopback(c.candidate)) return;
    try {
      await pc.addIceCandidate(c);
    } catch (e) {
      console.warn('candidate refused', e.message);
    }
  };
  const pump = setInterval(async () => {
    for (;;) {
      const i = inbox.findIndex((m) => m.type === 'candidate' && m.from === recorder);
      if (i < 0) break;
      const c = inbox.splice(i, 1)[0].candidate;
      if (remoteSet) await addCandidate(c);
      else pending.push(c);
    }
  }, 50);

  const offer = await next((m) => m.type === 'offer' && m.from === recorder, "the recorder's offer");
  await pc.setRemoteDescription({ type: 'offer', sdp: filterSdp(offer.sdp) });
  remoteSet = true;
  for (const c of pending.splice(0)) await addCandidate(c);
  for (const track of media.getTracks()) pc.addTrack(track, media);
  await pc.setLocalDescription();
  const firstAnswer = pc.localDescription.sdp;
  send({ type: 'answer', to: recorder, sdp: filterSdp(firstAnswer) });
  await until(() => pc.connectionState === 'connected', 'the first connection');

  const figures = async () => {
    const r = await api('GET', `/api/recordings/${rec.id}`);
    return r.tracks.map((t) => ({ kind: t.kind, file: t.file, frames: t.frames, packets: t.packets }));
  };
  const videoFrames = (tracks) => tracks.filter((t) => t.kind === 'video').map((t) => t.frames);
  await until(async () => videoFrames(await figures()).some((f) => f > 10), 'recorded video frames');

  /** One renegotiation from our side; never throws, reports what happened. */
  const renegotiate = async (what, change) => {
    const before = await figures();
    const ufrag = (sdp) => (sdp.match(/^a=ice-ufrag:(.*)$/m) || [])[1] || null;
    const step = { what, ok: false, figures_before: before, remote_ufrag_before: ufrag(pc.remoteDescription.sdp) };
    try {
      change();
      await pc.setLocalDescription();
      step.offer_setup = setupLines(pc.localDescription.sdp);
      send({ type: 'offer', to: recorder, sdp: filterSdp(pc.localDescription.sdp) });
      const answer = await next((m) => m.type === 'answer' && m.from === recorder, `the answer (${what})`);
      step.answer_setup = setupLines(answer.sdp);
      step.remote_ufrag_after = ufrag(answer.sdp);
      await pc.setRemoteDescription({ type: 'answer', sdp: filterSdp(answer.sdp) });
      step.signaling_state = pc.signalingState;
      await until(() => pc.connectionState === 'connected', `connected after ${what}`);
      step.connection_state = pc.connectionState;
      // Recording continues: more video frames than before, on every video track there was.
      const moved = (now) =>
        before
          .filter((t) => t.kind === 'video')
          .every((t) => (now.find((n) => n.file === t.file)?.frames ?? 0) > t.frames + 15);
      step.figures_after = await until(async () => {
        const now = await figures();
        return moved(now) ? now : null;
      }, `recorded frames after ${what}`);
      step.ok = true;
    } catch (e) {
      step.error = String(e.message || e);
      step.signaling_state = pc.signalingState;
      step.connection_state = pc.connectionState;
      // Back to stable, so that the next step is tried on its own.
      if (pc.signalingState === 'have-local-offer') {
        await pc.setLocalDescription({ type: 'rollback' }).catch(() => {});
      }
    }
    return step;
  };

  const steps = [];
  steps.push(await renegotiate('restart-ice', () => pc.restartIce()));
  // An added track: a canvas that changes every frame.
  const canvas = document.createElement('canvas');
  canvas.width = 320;
  canvas.height = 240;
  const g = canvas.getContext('2d');
  let n = 0;
  const paint = setInterval(() => {
    n += 1;
    g.fillStyle = `hsl(${(n * 7) % 360} 80% 50%)`;
    g.fillRect(0, 0, 320, 240);
    g.fillStyle = '#fff';
    g.fillText(String(n), 10 + (n % 280), 120);
  }, 33);
  const screen = canvas.captureStream(30);
  const canvasTrack = screen.getVideoTracks()[0];
  steps.push(await renegotiate('add-track', () => pc.addTrack(canvasTrack, screen)));
  let added = null;
  if (steps[1].ok) {
    // The added track shows up as a new video track of ours in the recording, with frames.
    const known = new Set(steps[1].figures_before.map((t) => t.file));
    try {
      added = await until(async () => {
        const t = (await figures()).find((t) => t.kind === 'video' && !known.has(t.file));
        return t && t.frames > 15 ? t : null;
      }, 'the added track in the recording');
    } catch (e) {
      steps[1].ok = false;
      steps[1].error = String(e.message || e);
    }
  }
  clearInterval(paint);
  clearInterval(pump);
  const result = {
    recording_id: rec.id,
    peer_id: welcome.id,
    recorder,
    first_offer_setup: setupLines(offer.sdp),
    first_answer_setup: setupLines(firstAnswer),
    steps,
    added_track: added,
    connection_states: states,
    final_figures: await figures(),
  };
  pc.close();
  ws.close();
  for (const t of [...media.getTracks(), canvasTrack]) t.stop();
  return result;
}

async function main() {
  const browser = await launch('renego');
  try {
    const { page } = browser;
    page.on('console', (m) => log(`[page ${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => log(`[pageerror] ${e.message}`));
    // A page on the server's own origin (the WebSocket and API accept it); /healthz keeps the
    // app's own code out of the way.
    await page.goto(`${base}/healthz`);
    log('page up');
    const result = await Promise.race([
      page.evaluate(inPage, { room }),
      new Promise((_, reject) => setTimeout(() => reject(new Error('the page timed out')), PAGE_TIMEOUT_MS)),
    ]);
    for (const s of result.steps) log(`${s.what}: ${s.ok ? 'ok' : `FAILED: ${s.error}`}`);
    const ok = result.steps.length === 2 && result.steps.every((s) => s.ok) && result.added_track !== null;
    process.stdout.write(JSON.stringify({ ok, ...result }) + '\n');
    return ok;
  } finally {
    await browser.close();
  }
}

main()
  .then((ok) => process.exit(ok ? 0 : 1))
  .catch((e) => {
    log(`FAILED: ${e.stack || e}`);
    process.stdout.write(JSON.stringify({ ok: false, error: String(e.message || e) }) + '\n');
    process.exit(1);
  });
