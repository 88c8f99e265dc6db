// The page's Call (src/web/call.js) under Node, against a real server: it joins, and when the
// test cuts its WebSocket it must reconnect by itself with its resume token and keep its id.
// Usage: node --experimental-websocket tests/resume_page.mjs http://127.0.0.1:PORT ROOM
// Prints one JSON line per event on stdout: {event: "joined"|"reconnecting"|"reconnected"|"closed", ...}.

const [base, room] = process.argv.slice(2);
globalThis.location = new URL(base); // call.js and ice.js read the page's location

// Node has no WebRTC: stand-ins that only record whether the call closed them, so that the
// test can tell that a signaling drop leaves the page's connections alone.
const connections = [];
globalThis.MediaStream = class {
  getTracks() { return []; }
  addTrack() {}
  removeTrack() {}
};
globalThis.RTCPeerConnection = class {
  constructor() { this.closed = false; this.transceivers = []; connections.push(this); }
  getTransceivers() { return this.transceivers; }
  addTransceiver(kind) { this.transceivers.push({ receiver: { track: { kind } } }); }
  addTrack() {}
  // The page opens a `chat` channel on each connection (SPEC §11).
  createDataChannel(label) { return { label, readyState: 'connecting', addEventListener() {}, close() {} }; }
  close() { this.closed = true; }
};
const open = () => connections.filter((pc) => !pc.closed).length;
const { Call } = await import(new URL('../src/web/call.js', import.meta.url));

const say = (event, detail = {}) => console.log(JSON.stringify({ event, ...detail }));
const call = new Call({ room, name: 'page', stream: null });
call.addEventListener('reconnecting', () => say('reconnecting', { id: call.id }));
call.addEventListener('reconnected', (e) => {
  say('reconnected', { id: call.id, after_ms: e.detail.after, connections: open() });
  call.leave();
  setTimeout(() => process.exit(0), 500);
});
call.addEventListener('closed', (e) => {
  say('closed', e.detail);
  process.exit(e.detail.clean ? 0 : 1);
});
const welcome = await call.join();
say('joined', { id: welcome.id, connections: open() });
setTimeout(() => {
  say('timeout');
  process.exit(2);
}, 40000);
