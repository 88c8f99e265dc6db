// The room view: join form, video tiles, people, recording indicator, mic/camera, leave.

import { Call } from './call.js';
import { $, h, ROOM_RE, setNotice, toast } from './dom.js';

const MEDIA_ERRORS = {
  NotAllowedError: 'camera or microphone access was refused: allow it in the browser, or untick Camera/Microphone',
  NotFoundError: 'no camera or microphone was found: untick what you do not have',
  NotReadableError: 'the camera or microphone is in use by another program',
  OverconstrainedError: 'the camera cannot deliver the requested format',
  SecurityError: 'media devices need a secure page (https or localhost)',
};

/**
 * Sets up the room view. `hooks.joined(room)`, `hooks.left()` and `hooks.recording(active)`
 * tell the rest of the page; `roomToken()` gives the room token from the settings.
 */
export function initRoom(hooks) {
  const form = $('#join-form');
  const callEl = $('#call');
  const tiles = $('#tiles');
  const people = $('#people');
  const notice = $('#join-notice');
  const callNotice = $('#call-notice');
  const recPill = $('#call-rec');
  const recTime = $('#call-rec-time');
  let call = null;
  let stream = null;
  let recSince = 0;
  let recTimer = 0;
  /** peer id → {el, video, label, state} */
  const tileMap = new Map();

  const params = new URLSearchParams(location.search);
  $('#join-room').value = params.get('room') || localStorage.getItem('recbot.room') || '';
  $('#join-name').value = params.get('name') || localStorage.getItem('recbot.name') || '';

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const room = $('#join-room').value.trim();
    const name = $('#join-name').value.trim();
    if (!ROOM_RE.test(room)) {
      setNotice(notice, 'A room name is 1 to 64 characters of letters, digits, _ and -.');
      return;
    }
    setNotice(notice, '');
    localStorage.setItem('recbot.room', room);
    localStorage.setItem('recbot.name', name);
    const button = $('#join-btn');
    button.disabled = true;
    button.textContent = 'Joining…';
    try {
      await join(room, name);
    } catch (e) {
      setNotice(notice, `Could not join room “${room}”: ${e.message}`);
      cleanup();
    } finally {
      button.disabled = false;
      button.textContent = 'Join room';
    }
  });

  async function join(room, name) {
    const wantVideo = $('#join-video').checked;
    const wantAudio = $('#join-audio').checked;
    stream = new MediaStream();
    if (wantVideo || wantAudio) {
      if (!navigator.mediaDevices) throw new Error(MEDIA_ERRORS.SecurityError);
      try {
        stream = await navigator.mediaDevices.getUserMedia({
          video: wantVideo && { width: { ideal: 640 }, height: { ideal: 480 } },
          audio: wantAudio,
        });
      } catch (e) {
        throw new Error(MEDIA_ERRORS[e.name] || `${e.name}: ${e.message}`);
      }
    }
    const thisCall = new Call({ room, name, roomToken: hooks.roomToken(), stream });
    call = thisCall;
    // Events of a call we have left no longer touch the view.
    const on = (type, fn) => thisCall.addEventListener(type, (e) => call === thisCall && fn(e.detail));
    on('peers', renderPeople);
    on('media', (d) => showMedia(d.id, d.stream));
    on('link', (d) => linkState(d.id, d.state));
    on('recording', recording);
    on('chat', (d) => addChat(call.peers.get(d.id)?.name || d.id, d.text));
    on('signal-error', (d) => toast(`Signaling refused a message: ${d.message} (${d.code})`, 'error'));
    // A dropped signaling socket: media keep flowing while the call reconnects (≤ 30 s).
    on('reconnecting', () => {
      setNotice(callNotice, 'Connection to the room lost: reconnecting…', 'info');
      callEl.dataset.signal = 'reconnecting';
    });
    on('reconnected', () => {
      setNotice(callNotice, '');
      delete callEl.dataset.signal;
    });
    on('closed', (d) => {
      if (!d.clean) {
        const why = d.reason ? `: ${d.reason}` : '';
        setNotice(notice, `The connection to the room was lost (code ${d.code}${why}). Join again to continue.`);
      }
      cleanup();
    });
    await thisCall.join();
    $('#call-room').textContent = room;
    form.hidden = true;
    callEl.hidden = false;
    setNotice(callNotice, '');
    addTile('self', name || 'You', { self: true });
    showMedia('self', stream);
    updateToggles();
    renderPeople();
    hooks.joined(room);
  }

  /** Appends a chat line (text only: never parsed as HTML). */
  function addChat(who, text, self = false) {
    const log = $('#chat-log');
    log.append(h('li', { class: self ? 'chat-line self' : 'chat-line' }, h('strong', {}, `${who}: `), text));
    log.scrollTop = log.scrollHeight;
  }

  $('#chat-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const input = $('#chat-text');
    const text = input.value;
    if (!call || !text.trim()) return;
    try {
      call.sendChat(text);
      addChat(call.name || 'You', text, true);
      input.value = '';
    } catch (e) {
      toast(e.message, 'error');
    }
  });

  $('#leave-btn').addEventListener('click', () => {
    call?.leave();
    cleanup();
  });

  $('#mic-btn').addEventListener('click', () => toggle('audio'));
  $('#cam-btn').addEventListener('click', () => toggle('video'));

  function toggle(kind) {
    for (const t of stream?.getTracks() || []) if (t.kind === kind) t.enabled = !t.enabled;
    updateToggles();
  }

  function updateToggles() {
    for (const [kind, id, label] of [
      ['audio', '#mic-btn', 'Mic'],
      ['video', '#cam-btn', 'Camera'],
    ]) {
      const tracks = stream?.getTracks().filter((t) => t.kind === kind) || [];
      const on = tracks.some((t) => t.enabled);
      const btn = $(id);
      btn.disabled = tracks.length === 0;
      btn.setAttribute('aria-pressed', String(on));
      btn.textContent = tracks.length === 0 ? `No ${label.toLowerCase()}` : `${label} ${on ? 'on' : 'off'}`;
    }
    tileMap.get('self')?.el.classList.toggle('video-off', !stream?.getVideoTracks().some((t) => t.enabled));
  }

  function cleanup() {
    $('#chat-log').replaceChildren();
    delete callEl.dataset.signal;
    if (stream) for (const t of stream.getTracks()) t.stop();
    stream = null;
    call = null;
    for (const id of [...tileMap.keys()]) removeTile(id);
    people.replaceChildren();
    recording({ active: false });
    form.hidden = false;
    callEl.hidden = true;
    hooks.left();
  }

  function addTile(id, label, { self = false, bot = false } = {}) {
    if (tileMap.has(id)) return tileMap.get(id);
    const video = h('video', { autoplay: true, playsInline: true, muted: self });
    const initial = (label || '?').trim().charAt(0).toUpperCase() || '?';
    const state = h('span', { class: 'tile-state' }, self ? '' : 'connecting');
    const el = h(
      'figure',
      { class: `tile${self ? ' self' : ' remote'}${bot ? ' bot' : ''} waiting`, dataset: { peer: id } },
      h('div', { class: 'avatar', 'aria-hidden': 'true' }, initial),
      video,
      h(
        'figcaption',
        {},
        h('span', { class: 'tile-name' }, label),
        self ? h('span', { class: 'badge' }, 'you') : null,
        bot ? h('span', { class: 'badge bot' }, 'bot') : null,
        state,
      ),
    );
    video.addEventListener('loadeddata', () => el.classList.remove('waiting'));
    if (self) tiles.prepend(el);
    else tiles.append(el);
    const tile = { el, video, state };
    tileMap.set(id, tile);
    layoutTiles();
    return tile;
  }

  function removeTile(id) {
    tileMap.get(id)?.el.remove();
    tileMap.delete(id);
    layoutTiles();
  }

  function layoutTiles() {
    tiles.dataset.count = String(Math.min(tileMap.size, 9));
  }

  function showMedia(id, mediaStream) {
    let tile = tileMap.get(id);
    if (!tile && call) {
      const peer = call.peers.get(id);
      if (!peer) return;
      tile = addTile(id, peerLabel(peer), { bot: peer.bot });
    }
    if (!tile) return;
    if (tile.video.srcObject !== mediaStream) tile.video.srcObject = mediaStream;
    tile.el.classList.toggle('audio-only', mediaStream.getVideoTracks().length === 0);
    tile.video.play().catch(() => {
      /* autoplay blocked: the user's next click on the tile starts it */
      tile.el.addEventListener('click', () => tile.video.play(), { once: true });
    });
  }

  function linkState(id, state) {
    const tile = tileMap.get(id);
    if (!tile) return;
    tile.el.dataset.state = state;
    tile.state.textContent = state === 'connected' ? '' : state;
  }

  function peerLabel(peer) {
    return peer.name || (peer.bot ? 'bot' : peer.whip ? 'WHIP publisher' : 'guest');
  }

  function renderPeople() {
    if (!call) return;
    const list = [...call.peers.values()];
    // Browsers get a tile at once; bots only when they send media; WHIP peers never.
    for (const peer of list) if (!peer.bot && !peer.whip) addTile(peer.id, peerLabel(peer));
    for (const id of [...tileMap.keys()]) if (id !== 'self' && !call.peers.has(id)) removeTile(id);
    const n = list.length + 1;
    $('#call-count').textContent = `${n} ${n === 1 ? 'person' : 'people'} here`;
    people.replaceChildren(
      h('li', { class: 'person me' }, h('span', { class: 'dot' }), $('#join-name').value.trim() || 'You', h('span', { class: 'badge' }, 'you')),
      ...list.map((peer) =>
        h(
          'li',
          { class: 'person', title: peer.id },
          h('span', { class: 'dot' }),
          peerLabel(peer),
          peer.bot ? h('span', { class: 'badge bot' }, 'bot') : null,
          peer.whip ? h('span', { class: 'badge' }, 'WHIP') : null,
        ),
      ),
    );
  }

  function recording({ active }) {
    recPill.hidden = !active;
    $('#top-rec').hidden = !active;
    clearInterval(recTimer);
    if (active) {
      if (!recSince) recSince = Date.now();
      const tick = () => {
        const s = Math.floor((Date.now() - recSince) / 1000);
        recTime.textContent = `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
      };
      tick();
      recTimer = setInterval(tick, 1000);
    } else {
      recSince = 0;
      recTime.textContent = '';
    }
    hooks.recording(active);
  }

  return {
    /** The room joined, or null. */
    currentRoom: () => (call ? call.room : null),
  };
}
