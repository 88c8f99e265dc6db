// A browser reaching the recorder the hard ways, driven by tests/reach.rs (SPEC §10):
//
//   node tests/browser/reach.mjs <base-url> <room> <mode>
//
// One headless Chromium (Debian's /usr/bin/chromium, fake camera and microphone, a fresh
// profile) opens a page on the server's origin and runs a minimal signaling client inside it:
// it joins <room>, starts a recording of the room through the API, answers the recorder's
// offers (every one of them: the recorder may restart ICE), and waits until the recording
// receives its video. Then, by <mode>:
//
// - `tcp`: nothing more (the Rust test has dropped UDP in the network namespace): reports the
//   selected candidate pair, whose protocol must be tcp.
// - `relay`: the connection uses the `welcome`'s ICE servers with iceTransportPolicy "relay":
//   reports the welcome's TURN entries and the selected pair (a relay candidate of ours).
// - `restart`: (1) `pc.restartIce()` and a new offer of ours: time until the recording's video
//   moves again; (2) an outage: UDP dropped (nft, in the namespace) until the recorder,
//   seeing its connection down, restarts ICE itself with a new offer; UDP back: time until
//   the recording's video moves again.
//
// The last line on stdout is a JSON summary; progress goes to stderr. Only loopback ICE
// candidates are used or sent, and the flags keep Chromium from calling out.

import { launch } from './chromium.mjs';
import { execFileSync } from 'node:child_process';

const [base, room, mode] = process.argv.slice(2);
if (!base || !room || !['tcp', 'relay', 'restart'].includes(mode)) {
  console.error('usage: node reach.mjs <base-url> <room> tcp|relay|restart');
  process.exit(64);
}
const PAGE_TIMEOUT_MS = 90_000;


const started = Date.now();
const log = (...args) => console.error(`[reach ${((Date.now() - started) / 1000).toFixed(1)}s]`, ...args);

/** Drops (true) or lets through (false) every UDP packet leaving in this namespace. */
function dropUdp(on) {
  if (on) {
    execFileSync('nft', ['add', 'table', 'inet', 'reach_outage']);
    execFileSync('nft', ['add', 'chain', 'inet', 'reach_outage', 'out', '{ type filter hook output priority 0 ; }']);
    execFileSync('nft', ['add', 'rule', 'inet', 'reach_outage', 'out', 'meta', 'l4proto', 'udp', 'drop']);
  } else {
    execFileSync('nft', ['delete', 'table', 'inet', 'reach_outage']);
  }
  log(on ? 'UDP dropped' : 'UDP back');
}

/** The in-page client. Runs inside Chromium; returns the summary (or throws). */
async function inPage({ room, mode }) {
  const STEP_MS = 30_000;
  const started = Date.now();
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const isLoopback = (line) => {
    const f = String(line || '').replace(/^a=/, '').trim().split(/\s+/);
    const a = (f[4] || '').replace(/^\[|\]$/g, '').toLowerCase();
    return f.length >= 8 && (/^127\.\d+\.\d+\.\d+$/.test(a) || a === '::1');
  };
  const filterSdp = (sdp) =>
    sdp.split('\r\n').filter((l) => !l.startsWith('a=candidate:') || isLoopback(l)).join('\r\n');
  const ufrag = (sdp) => (sdp.match(/^a=ice-ufrag:(.*)$/m) || [])[1] || null;
  const until = async (cond, what, ms = STEP_MS) => {
    const end = Date.now() + ms;
    for (;;) {
      const v = await cond();
      if (v) return v;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
      await sleep(50);
    }
  };
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

  const media = await navigator.mediaDevices.getUserMedia({ audio: true, video: { width: 640, height: 480 } });
  const ws = new WebSocket(`${location.origin.replace(/^http/, 'ws')}/rooms/${room}/ws?name=reach`);
  const inbox = [];
  let wake = null;
  ws.onmessage = (e) => {
    inbox.push(JSON.parse(e.data));
    if (wake) wake();
  };
  const send = (msg) => ws.send(JSON.stringify(msg));
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error('websocket error'));
  });
  const welcome = await until(() => inbox.find((m) => m.type === 'welcome'), 'the welcome');
  inbox.splice(inbox.indexOf(welcome), 1);

  const config = mode === 'relay'
    ? { iceServers: welcome.ice_servers, iceTransportPolicy: 'relay' }
    : { iceServers: [] };
  const pc = new RTCPeerConnection(config);
  const states = [];
  pc.onconnectionstatechange = () => states.push([Date.now(), pc.connectionState]);
  const rec = await api('POST', '/api/recordings', { room });
  const recorder = rec.bot_peer;
  // In relay mode our candidates are relays on the TURN server (127.0.0.1 here).
  pc.onicecandidate = ({ candidate }) => {
    if (candidate && !isLoopback(candidate.candidate)) return;
    send({ type: 'candidate', to: recorder, candidate: candidate ? candidate.toJSON() : null });
  };

  // Everything the recorder sends, handled in order: offers answered (the first one adds our
  // tracks), answers applied, candidates added once a remote description is there.
  const offers = [];
  let answers = 0;
  let sentOffer = false;
  let tracksAdded = false;
  const pending = [];
  const recorderCandidates = [];
  const handle = async (m) => {
    if (m.from !== recorder) return;
    if (m.type === 'offer') {
      offers.push({ at: Date.now(), ufrag: ufrag(m.sdp) });
      await pc.setRemoteDescription({ type: 'offer', sdp: filterSdp(m.sdp) });
      if (!tracksAdded) {
        for (const track of media.getTracks()) pc.addTrack(track, media);
        tracksAdded = true;
      }
      await pc.setLocalDescription();
      send({ type: 'answer', to: recorder, sdp: filterSdp(pc.localDescription.sdp) });
      for (const c of pending.splice(0)) await pc.addIceCandidate(c).catch(() => {});
    } else if (m.type === 'answer' && sentOffer) {
      sentOffer = false;
      answers += 1;
      await pc.setRemoteDescription({ type: 'answer', sdp: filterSdp(m.sdp) });
    } else if (m.type === 'candidate') {
      const c = m.candidate;
      const type = c && c.candidate ? (c.candidate.match(/ typ (\w+)/) || [])[1] : null;
      if (type) recorderCandidates.push(`${c.candidate.split(' ')[2].toLowerCase()} ${type}`);
      if (!c || !c.candidate || !isLoopback(c.candidate)) return;
      if (pc.remoteDescription) await pc.addIceCandidate(c).catch((e) => console.warn('candidate', e.message));
      else pending.push(c);
    }
  };
  let running = true;
  const loop = (async () => {
    while (running) {
      const m = inbox.shift();
      if (m) {
        try {
          await handle(m);
        } catch (e) {
          console.warn(`${m.type} failed: ${e.message}`);
        }
      } else {
        await new Promise((r) => {
          wake = r;
          setTimeout(r, 100);
        });
      }
    }
  })();

  const videoFrames = async () => {
    const r = await api('GET', `/api/recordings/${rec.id}`);
    return r.tracks.filter((t) => t.kind === 'video').reduce((n, t) => n + t.frames, 0);
  };
  /** Waits until the recording's video moved by `more` frames; returns when, or throws. */
  const videoMoves = async (more, what, ms = STEP_MS) => {
    const from = await videoFrames();
    await until(async () => (await videoFrames()) >= from + more, what, ms);
    return Date.now();
  };
  const selectedPair = async () => {
    const stats = await pc.getStats();
    let pair = null;
    stats.forEach((s) => {
      if (s.type === 'transport' && s.selectedCandidatePairId) pair = stats.get(s.selectedCandidatePairId);
    });
    if (!pair) stats.forEach((s) => { if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded') pair = s; });
    if (!pair) return null;
    const local = stats.get(pair.localCandidateId) || {};
    const remote = stats.get(pair.remoteCandidateId) || {};
    return {
      local: { protocol: local.protocol, type: local.candidateType, address: local.address, port: local.port, relay_protocol: local.relayProtocol },
      remote: { protocol: remote.protocol, type: remote.candidateType, address: remote.address, port: remote.port, tcp_type: remote.tcpType },
      bytes_sent: pair.bytesSent,
    };
  };

  await until(() => pc.connectionState === 'connected', 'the connection');
  await videoMoves(15, 'recorded video frames');
  const result = {
    recording_id: rec.id,
    peer_id: welcome.id,
    recorder,
    mode,
    welcome_ice_servers: welcome.ice_servers,
    selected_pair: await selectedPair(),
  };

  if (mode === 'restart') {
    // (1) Our own ICE restart.
    const before = ufrag(pc.remoteDescription.sdp);
    const t0 = Date.now();
    pc.restartIce();
    await pc.setLocalDescription();
    sentOffer = true;
    send({ type: 'offer', to: recorder, sdp: filterSdp(pc.localDescription.sdp) });
    await until(() => answers >= 1, 'the answer to our ICE restart');
    const answered = Date.now();
    await until(() => pc.iceConnectionState === 'connected' || pc.iceConnectionState === 'completed', 'ICE after our restart');
    const moved = await videoMoves(10, 'video after our restart');
    result.own_restart = {
      remote_ufrag_before: before,
      remote_ufrag_after: ufrag(pc.remoteDescription.sdp),
      answer_ms: answered - t0,
      media_ms: moved - t0,
    };
    // (2) An outage: the recorder notices and restarts ICE itself.
    const offersBefore = offers.length;
    const down = Date.now();
    await window.dropUdp(true);
    await until(() => offers.length > offersBefore, "the recorder's ICE restart offer", 40_000);
    const offered = Date.now();
    // Longer down than that restart's checks last (about 1 s: webrtc-rs gives a pair up after
    // 21 checks 50 ms apart and never tries it again), then back: the recorder's next restart,
    // not one 10 s later, brings the media back.
    await sleep(1500);
    await window.dropUdp(false);
    const up = Date.now();
    const movedAgain = await videoMoves(10, 'video after the outage', 40_000);
    // And a while more, so that the files run on past the outage.
    await videoMoves(30, 'more video after the outage', 40_000);
    result.outage = {
      offers_before: offersBefore,
      recorder_offers: offers.slice(offersBefore),
      first_ufrag: offers[0].ufrag,
      restart_offer_ms_after_drop: offered - down,
      outage_ms: up - down,
      media_ms_after_udp_back: movedAgain - up,
      start_ms: down - started,
      end_ms: up - started,
    };
  } else {
    await videoMoves(30, 'more recorded video frames');
    result.selected_pair = await selectedPair();
  }
  result.recorder_candidates = [...new Set(recorderCandidates)];
  result.connection_states = states.map(([t, s]) => [t - started, s]);
  result.video_frames = await videoFrames();
  running = false;
  await loop;
  pc.close();
  ws.close();
  for (const t of media.getTracks()) t.stop();
  return result;
}

async function main() {
  const browser = await launch('reach');
  try {
    const { page } = browser;
    page.on('console', (m) => log(`[page ${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => log(`[pageerror] ${e.message}`));
    await page.exposeFunction('dropUdp', (on) => dropUdp(on));
    await page.goto(`${base}/healthz`);
    log(`page up (${mode})`);
    const result = await Promise.race([
      page.evaluate(inPage, { room, mode }),
      new Promise((_, reject) => setTimeout(() => reject(new Error('the page timed out')), PAGE_TIMEOUT_MS)),
    ]);
    process.stdout.write(JSON.stringify({ ok: true, ...result }) + '\n');
    return true;
  } finally {
    await browser.close();
  }
}

main()
  .then((ok) => process.exit(ok ? 0 : 1))
  .catch((e) => {
    log(`FAILED: ${e.stack || e}`);
    if (mode === 'restart') {
      try {
        dropUdp(false);
      } catch {}
    }
    process.stdout.write(JSON.stringify({ ok: false, error: String(e.message || e) }) + '\n');
    process.exit(1);
  });
