// A session in a room: the WebSocket signaling of SPEC §2 and one RTCPeerConnection per
// remote peer (mesh), negotiated with W3C perfect negotiation.
//
// - The newcomer offers to every peer listed in its `welcome`; later joiners offer to us.
// - Politeness: recbot's bots are always polite toward a browser, so the browser is the
//   impolite side toward a bot; between browsers the peer with the smaller id is polite.
// - WHIP publishers (`whip: true`) send their media to the server only: nobody offers to them.
//
// - Resume (SPEC §10): when the WebSocket drops without a close frame, the call keeps its
//   RTCPeerConnections and reconnects with the `resume` token of its last welcome (at once,
//   then backing off 250 ms → 4 s, for up to 30 s). Messages it sends meanwhile wait in an outbox; the server
//   queued those for us. A close frame from the server (leave, shutdown, refusal) ends the call.
//
// Events (CustomEvent, details in brackets): `peers` (the peer list changed), `media`
// [{id, stream}], `link` [{id, state}], `recording` [{active, id, peer, state}],
// `signal-error` [{code, message}], `reconnecting` [{since}], `reconnected` [{after}],
// `closed` [{code, reason, clean}].

import { filterSdp, keepCandidate } from './ice.js';

/** The WebSocket URL of a room, derived from the page's own origin. */
export function roomSocketUrl(room, name, roomToken, resume) {
  const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const query = new URLSearchParams();
  if (name) query.set('name', name);
  if (roomToken) query.set('token', roomToken);
  if (resume) query.set('resume', resume);
  const qs = query.toString();
  return `${scheme}//${location.host}/rooms/${encodeURIComponent(room)}/ws${qs ? '?' + qs : ''}`;
}

/**
 * Why a connection closed before the welcome. Browsers hide the HTTP status of a refused
 * WebSocket upgrade (401 bad room token, 503 room full, 403 origin), so this lists the causes.
 */
function refusal(event, roomToken) {
  const detail = event.reason ? `: ${event.reason}` : ` (code ${event.code})`;
  const token = roomToken
    ? 'the room token in Settings may be wrong'
    : 'the service may require a room token (enter it in Settings)';
  return `the service did not let us in${detail}. Either ${token}, the room is full, or the service is unreachable.`;
}

/** Name recbot gives its recorder bot. */
const RECORDER_NAME = 'recorder';

/** Largest chat message, in bytes of its JSON (SPEC §11). */
export const CHAT_MAX_BYTES = 4096;

/** How long the server keeps a dropped client's seat (SPEC §10). */
const RESUME_WINDOW_MS = 30000;

/** Messages kept for the resumed socket at most (older ones are dropped first). */
const OUTBOX_LIMIT = 500;

export class Call extends EventTarget {
  /** @param {{room: string, name: string, roomToken?: string, stream: MediaStream}} options */
  constructor({ room, name, roomToken, stream }) {
    super();
    this.room = room;
    this.name = name;
    this.roomToken = roomToken || '';
    this.stream = stream;
    this.id = null;
    this.iceServers = [];
    /** id → {id, name, bot, whip} */
    this.peers = new Map();
    /** id → Link */
    this.links = new Map();
    /** recorder peer id → recording id (or null when only seen in the welcome) */
    this.recorders = new Map();
    this.ws = null;
    this.leaving = false;
    /** The one-use token of the last welcome, to resume after a drop. */
    this.resumeToken = null;
    /** Set while reconnecting: when the socket dropped (ms). */
    this.droppedAt = 0;
    this.retryTimer = 0;
    /** Messages sent while reconnecting, for the resumed socket. */
    this.outbox = [];
  }

  /** Connects; resolves with the welcome, rejects if the server refuses or closes first. */
  join() {
    return new Promise((resolve, reject) => {
      this.open(
        roomSocketUrl(this.room, this.name, this.roomToken),
        (msg) => {
          this.onWelcome(msg);
          resolve(msg);
        },
        (event) => {
          this.closeLinks();
          reject(new Error(refusal(event, this.roomToken)));
        },
      );
    });
  }

  /**
   * Opens a socket at `url`: `welcomed(msg)` on its welcome, `failed(event)` if it closes
   * before; later messages go to onMessage and a later close to onDropped. Events of a socket
   * that is no longer the call's own are ignored.
   */
  open(url, welcomed, failed) {
    let got = false;
    const ws = new WebSocket(url);
    this.ws = ws;
    ws.onmessage = (event) => {
      if (this.ws !== ws) return;
      let msg;
      try {
        msg = JSON.parse(event.data);
      } catch {
        return;
      }
      if (msg.type === 'welcome' && !got) {
        got = true;
        welcomed(msg);
      } else {
        this.onMessage(msg);
      }
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      if (got) this.onDropped(event);
      else failed(event);
    };
  }

  /**
   * The socket closed after its welcome. A close frame (wasClean: leave, server shutdown,
   * refusal) ends the call; a drop (1006, no close frame) starts the resume.
   */
  onDropped(event) {
    if (this.leaving || event.wasClean || !this.resumeToken) {
      this.end(event.code, event.reason);
      return;
    }
    this.droppedAt = Date.now();
    this.reconnect(0);
  }

  /** Tries to resume in `delay` ms, backing off after each failure, for 30 s from the drop. */
  reconnect(delay) {
    if (this.leaving) return;
    const since = this.droppedAt;
    if (Date.now() - since + delay > RESUME_WINDOW_MS) {
      this.end(1006, 'the connection to the room could not be resumed within 30 s');
      return;
    }
    this.emit('reconnecting', { since });
    this.retryTimer = setTimeout(() => {
      this.open(
        roomSocketUrl(this.room, this.name, this.roomToken, this.resumeToken),
        (msg) => this.onResumed(msg),
        () => this.reconnect(Math.min(Math.max(delay * 2, 250), 4000)),
      );
    }, delay);
  }

  /** The welcome of a resumed session: same id; catch up with the peers; flush the outbox. */
  onResumed(msg) {
    const after = Date.now() - this.droppedAt;
    this.droppedAt = 0;
    this.resumeToken = msg.resume || null;
    const now = new Set((msg.peers || []).map((p) => p.id));
    for (const id of [...this.peers.keys()]) if (!now.has(id)) this.dropPeer(id);
    for (const peer of msg.peers || []) {
      // Those who joined meanwhile offer to us: their offers are among the queued messages.
      if (!this.peers.has(peer.id)) this.peers.set(peer.id, peer);
    }
    this.emit('peers');
    const outbox = this.outbox;
    this.outbox = [];
    for (const message of outbox) this.send(message);
    this.emit('reconnected', { after });
  }

  /** The call is over (not by our leave): closes every connection and tells the page. */
  end(code, reason) {
    clearTimeout(this.retryTimer);
    this.droppedAt = 0;
    this.outbox = [];
    this.closeLinks();
    this.emit('closed', { code, reason, clean: this.leaving });
  }

  /** Leaves the room: tells the server, closes every connection. */
  leave() {
    this.leaving = true;
    clearTimeout(this.retryTimer);
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.send({ type: 'leave' });
      // The server closes with 1000 after `leave`; close our side too in case it does not.
      setTimeout(() => this.ws.readyState !== WebSocket.CLOSED && this.ws.close(1000), 1000);
    } else if (this.ws) {
      this.ws.close(1000);
    }
    this.closeLinks();
  }

  /** Whether a recording of this room is running (as far as this client has seen). */
  get recording() {
    return this.recorders.size > 0;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    } else if (this.droppedAt && !this.leaving) {
      // Reconnecting: the resumed socket sends it.
      this.outbox.push(message);
      if (this.outbox.length > OUTBOX_LIMIT) this.outbox.shift();
    }
  }

  emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  onWelcome(msg) {
    this.id = msg.id;
    this.resumeToken = msg.resume || null;
    this.iceServers = msg.ice_servers || [];
    for (const peer of msg.peers || []) {
      this.peers.set(peer.id, peer);
      if (peer.bot && peer.name === RECORDER_NAME) this.recorders.set(peer.id, null);
    }
    this.emit('peers');
    if (this.recording) this.emitRecording('started', null, [...this.recorders.keys()][0]);
    // The newcomer offers to everyone already here (except WHIP publishers).
    for (const peer of msg.peers || []) {
      if (!peer.whip) this.link(peer.id).offer();
    }
  }

  onMessage(msg) {
    switch (msg.type) {
      case 'peer-joined':
        this.peers.set(msg.peer.id, msg.peer);
        this.emit('peers');
        break;
      case 'peer-left':
        this.dropPeer(msg.id);
        break;
      case 'offer':
        this.link(msg.from).receive(msg);
        break;
      case 'answer':
      case 'candidate':
        this.links.get(msg.from)?.receive(msg);
        break;
      case 'recording':
        if (msg.state === 'started') this.recorders.set(msg.peer, msg.id);
        else this.recorders.delete(msg.peer);
        this.emitRecording(msg.state, msg.id, msg.peer);
        break;
      case 'error':
        this.emit('signal-error', { code: msg.code, message: msg.message, ref: msg.ref });
        break;
      default:
        break;
    }
  }

  emitRecording(state, id, peer) {
    this.emit('recording', { active: this.recording, state, id, peer });
  }

  dropPeer(id) {
    this.peers.delete(id);
    this.links.get(id)?.close();
    this.links.delete(id);
    if (this.recorders.delete(id)) this.emitRecording('stopped', null, id);
    this.emit('peers');
  }

  /** The link to `id`, created on first use. */
  link(id) {
    let link = this.links.get(id);
    if (!link) {
      const peer = this.peers.get(id) || { id, name: '', bot: false, whip: false };
      // A bot is always polite toward us; between browsers the smaller id is polite.
      const polite = peer.bot ? false : this.id < id;
      link = new Link(this, id, polite);
      this.links.set(id, link);
    }
    return link;
  }

  /**
   * Sends a chat message to everyone connected (SPEC §11: a JSON {"text"} of at most 4 KiB on
   * each connection's `chat` DataChannel, the recorder's included). Returns how many got it.
   */
  sendChat(text) {
    const message = JSON.stringify({ text });
    if (new TextEncoder().encode(message).length > CHAT_MAX_BYTES) throw new Error('The message is over 4 KiB.');
    let sent = 0;
    for (const link of this.links.values()) {
      if (link.chat?.readyState === 'open') {
        link.chat.send(message);
        sent += 1;
      }
    }
    return sent;
  }

  closeLinks() {
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }
}

/** One RTCPeerConnection toward one remote peer, with perfect negotiation. */
class Link {
  constructor(call, remote, polite) {
    this.call = call;
    this.remote = remote;
    this.polite = polite;
    this.makingOffer = false;
    this.ignoreOffer = false;
    this.tracksAdded = false;
    this.stream = new MediaStream();
    this.queue = Promise.resolve();
    const pc = new RTCPeerConnection({ iceServers: call.iceServers });
    this.pc = pc;
    pc.onnegotiationneeded = () => this.makeOffer();
    pc.onicecandidate = ({ candidate }) => {
      if (candidate && !keepCandidate(candidate.candidate)) return;
      this.call.send({
        type: 'candidate',
        to: remote,
        candidate: candidate ? candidate.toJSON() : null,
      });
    };
    pc.ontrack = ({ track }) => {
      this.stream.addTrack(track);
      track.onended = () => this.stream.removeTrack(track);
      this.call.emit('media', { id: remote, stream: this.stream });
    };
    pc.onconnectionstatechange = () =>
      this.call.emit('link', { id: remote, state: pc.connectionState });
    pc.ondatachannel = ({ channel }) => {
      if (channel.label === 'chat') this.useChat(channel);
    };
    this.chat = null;
  }

  /** Keeps `channel` as this connection's chat; its messages become `chat` events. */
  useChat(channel) {
    this.chat = channel;
    channel.onmessage = ({ data }) => {
      if (typeof data !== 'string' || data.length > CHAT_MAX_BYTES) return;
      let msg;
      try {
        msg = JSON.parse(data);
      } catch {
        return;
      }
      if (msg && typeof msg.text === 'string') this.call.emit('chat', { id: this.remote, text: msg.text });
    };
  }

  /** Starts the negotiation from our side: adding our tracks fires `negotiationneeded`. */
  offer() {
    // In our offer, so that the m=application section is negotiated with the media.
    if (!this.chat) this.useChat(this.pc.createDataChannel('chat'));
    this.addTracks();
    // Without a camera or microphone we still want to receive theirs.
    const kinds = new Set(this.pc.getTransceivers().map((t) => t.receiver.track.kind));
    for (const kind of ['audio', 'video']) {
      if (!kinds.has(kind)) this.pc.addTransceiver(kind, { direction: 'recvonly' });
    }
  }

  addTracks() {
    if (this.tracksAdded) return;
    this.tracksAdded = true;
    const stream = this.call.stream;
    if (stream) for (const track of stream.getTracks()) this.pc.addTrack(track, stream);
  }

  async makeOffer() {
    try {
      this.makingOffer = true;
      await this.pc.setLocalDescription();
      const sdp = filterSdp(this.pc.localDescription.sdp);
      this.call.send({ type: 'offer', to: this.remote, sdp });
    } catch (e) {
      console.warn(`offer to ${this.remote} failed`, e);
    } finally {
      this.makingOffer = false;
    }
  }

  /** Handles an offer, answer or candidate from the remote, one at a time, in order. */
  receive(msg) {
    this.queue = this.queue.then(() => this.handle(msg)).catch((e) => {
      console.warn(`${msg.type} from ${this.remote} failed`, e);
    });
  }

  async handle(msg) {
    const pc = this.pc;
    if (msg.type === 'offer' || msg.type === 'answer') {
      const description = { type: msg.type, sdp: filterSdp(msg.sdp) };
      const collision = msg.type === 'offer' && (this.makingOffer || pc.signalingState !== 'stable');
      this.ignoreOffer = !this.polite && collision;
      if (this.ignoreOffer) return;
      await pc.setRemoteDescription(description); // a polite peer rolls back implicitly
      if (msg.type === 'offer') {
        // Tracks added now reuse the transceivers the offer created (answer: send/recv).
        this.addTracks();
        await pc.setLocalDescription();
        this.call.send({ type: 'answer', to: this.remote, sdp: filterSdp(pc.localDescription.sdp) });
      }
    } else if (msg.type === 'candidate') {
      const c = msg.candidate;
      try {
        if (!c || !c.candidate) await pc.addIceCandidate(); // end of candidates
        else if (keepCandidate(c.candidate)) await pc.addIceCandidate(c);
      } catch (e) {
        if (!this.ignoreOffer) throw e;
      }
    }
  }

  close() {
    this.pc.close();
    for (const track of this.stream.getTracks()) track.stop();
    this.call.emit('link', { id: this.remote, state: 'closed' });
  }
}
