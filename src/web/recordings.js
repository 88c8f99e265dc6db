// The recordings view: start a recording of a room, the list with live figures, stop,
// play, download, delete.

import { api } from './api.js';
import { $, h, formatBytes, formatDuration, formatLoss, formatTime, ROOM_RE, setNotice, toast } from './dom.js';
import { downloadButton, play } from './player.js';

const ACTIVE = new Set(['starting', 'recording', 'stopping']);
const STATE_LABEL = {
  starting: 'Starting',
  recording: 'Recording',
  stopping: 'Stopping',
  stopped: 'Stopped',
  failed: 'Failed',
};
const REASON_LABEL = {
  requested: 'stopped on request',
  'max-duration': 'reached its maximum length',
  shutdown: 'stopped by a service shutdown',
  'disk-full': 'stopped: the disk is full',
  silence: 'ended by silence',
  'peer-left': 'ended when the caller left',
  interrupted: 'interrupted (the service stopped unexpectedly; files were repaired)',
  error: 'stopped by an error',
};

export function initRecordings() {
  const list = $('#rec-list');
  const notice = $('#rec-notice');
  const form = $('#rec-form');
  /** id → {el, parts, shape} */
  const cards = new Map();
  const opened = new Set();
  let timer = 0;
  let listError = '';
  let loaded = false;

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const room = $('#rec-room').value.trim();
    if (!ROOM_RE.test(room)) {
      setNotice(notice, 'A room name is 1 to 64 characters of letters, digits, _ and -.');
      return;
    }
    const button = $('#rec-start');
    button.disabled = true;
    try {
      const body = {
        room,
        audio: $('#rec-audio').value,
        mix: $('#rec-mix').checked,
        composite: $('#rec-composite').checked,
      };
      if ($('#rec-notice-check').checked) body.notice = true;
      const rec = await api.startRecording(body);
      opened.add(rec.id);
      setNotice(notice, '');
      toast(`Recording room ${room}`, 'ok');
    } catch (e) {
      setNotice(notice, e.describe(`Cannot start recording room “${room}”`));
    } finally {
      button.disabled = false;
      refresh();
    }
  });

  async function refresh() {
    clearTimeout(timer);
    let recordings = null;
    try {
      recordings = (await api.recordings()).recordings || [];
      if (listError) setNotice(notice, '');
      listError = '';
    } catch (e) {
      listError = e.describe('Cannot load the recordings');
      setNotice(notice, listError);
    }
    if (recordings) render(recordings);
    const active = recordings?.some((r) => ACTIVE.has(r.state));
    timer = setTimeout(refresh, active ? 1000 : 5000);
  }

  function render(recordings) {
    loaded = true;
    const ids = new Set(recordings.map((r) => r.id));
    for (const [id, card] of cards) {
      if (!ids.has(id)) {
        card.el.remove();
        cards.delete(id);
      }
    }
    let previous = null;
    for (const rec of recordings) {
      let card = cards.get(rec.id);
      if (!card) {
        card = createCard(rec);
        cards.set(rec.id, card);
      }
      updateCard(card, rec);
      // Keep the server's order (newest first) without moving cards that are in place.
      const expected = previous ? previous.nextSibling : list.firstChild;
      if (expected !== card.el) list.insertBefore(card.el, expected);
      previous = card.el;
    }
    if (!recordings.length) {
      list.replaceChildren(h('p', { class: 'empty' }, 'No recordings yet. Join a room, then start one here.'));
    } else {
      list.querySelector('.empty')?.remove();
    }
  }

  function createCard(rec) {
    const parts = {
      state: h('span', { class: 'state' }),
      title: h('strong', { class: 'rec-room' }),
      meta: h('span', { class: 'muted small' }),
      actions: h('div', { class: 'card-actions' }),
      figures: h('dl', { class: 'figures' }),
      reason: h('p', { class: 'reason small' }),
      tracks: h('div', { class: 'table-wrap' }),
      files: h('ul', { class: 'files' }),
    };
    const details = h(
      'details',
      { class: 'card-details', open: opened.has(rec.id) || ACTIVE.has(rec.state) },
      h('summary', {}, 'Tracks and files'),
      parts.tracks,
      parts.files,
    );
    details.addEventListener('toggle', () => (details.open ? opened.add(rec.id) : opened.delete(rec.id)));
    const el = h(
      'article',
      { class: 'card rec-card', dataset: { id: rec.id } },
      h('header', { class: 'card-head' }, h('div', { class: 'card-title' }, parts.state, parts.title, parts.meta), parts.actions),
      parts.figures,
      parts.reason,
      details,
    );
    return { el, parts, details, shape: '' };
  }

  function updateCard(card, rec) {
    const { parts } = card;
    card.el.dataset.state = rec.state;
    parts.state.className = `state state-${rec.state}`;
    parts.state.textContent = STATE_LABEL[rec.state] || rec.state;
    parts.title.textContent = rec.room;
    const who = new Set((rec.tracks || []).map((t) => t.participant)).size;
    parts.meta.textContent = `${formatTime(rec.started_at)}${who ? ` · ${who} ${who === 1 ? 'person' : 'people'}` : ''} · ${rec.id}`;
    if (ACTIVE.has(rec.state) && !card.details.open && !card.wasActive) card.details.open = true;
    card.wasActive = ACTIVE.has(rec.state);

    const tracks = rec.tracks || [];
    const end = rec.stopped_at ? Date.parse(rec.stopped_at) : Date.now();
    const elapsed = Math.max(0, end - Date.parse(rec.started_at));
    const lost = sum(tracks, 'packets_lost');
    const packets = sum(tracks, 'packets');
    parts.figures.replaceChildren(
      ...figure('Duration', formatDuration(elapsed)),
      ...figure('Tracks', String(tracks.length)),
      ...figure('Size', formatBytes(totalBytes(rec))),
      ...figure('Loss', formatLoss(lost, packets), lost ? 'warn' : ''),
    );
    const composite = rec.composite;
    const reason = rec.error
      ? `Error: ${rec.error}`
      : composite && composite.state === 'failed'
        ? `Composite video failed: ${composite.error || 'unknown error'}`
        : composite && (composite.state === 'rendering' || (composite.state === 'pending' && !ACTIVE.has(rec.state)))
          ? `Composite video: ${composite.state} ${Math.round((composite.progress || 0) * 100)} %`
      : rec.stop_reason && rec.stop_reason !== 'requested'
        ? `Recording ${REASON_LABEL[rec.stop_reason] || rec.stop_reason}.`
        : '';
    parts.reason.textContent = reason;
    parts.reason.hidden = !reason;
    parts.reason.classList.toggle('bad', rec.state === 'failed' || !!rec.error);

    parts.tracks.replaceChildren(tracks.length ? trackTable(tracks) : h('p', { class: 'muted small' }, ACTIVE.has(rec.state) ? 'Waiting for media…' : 'No tracks were recorded.'));

    // Buttons and file rows are rebuilt only when they change, so clicks never hit a
    // replaced element.
    // The meeting as a whole first: the composite, then the room mix, then the tracks' files.
    const files = [...(rec.files || [])].sort((a, b) => rank(a.name) - rank(b.name));
    const shape = `${rec.state}|${rec.paused}|${files.map((f) => f.name).join(',')}`;
    if (shape !== card.shape) {
      card.shape = shape;
      parts.actions.replaceChildren(...actions(rec));
      parts.files.replaceChildren(...files.map((f) => fileRow(rec, f)));
    }
    for (const f of files) {
      const row = parts.files.querySelector(`[data-file="${CSS.escape(f.name)}"]`);
      const size = row && row.querySelector('.file-size');
      if (size) size.textContent = formatBytes(f.bytes);
      const badge = row && row.querySelector('.upload');
      if (badge) badge.replaceWith(uploadBadge(f));
    }
  }

  function actions(rec) {
    if (ACTIVE.has(rec.state)) {
      const stop = h('button', { class: 'btn danger small', type: 'button', disabled: rec.state === 'stopping' }, rec.state === 'stopping' ? 'Stopping…' : 'Stop');
      stop.addEventListener('click', async () => {
        stop.disabled = true;
        stop.textContent = 'Stopping…';
        try {
          await api.stopRecording(rec.id);
          toast(`Recording of ${rec.room} stopped; files finalized`, 'ok');
        } catch (e) {
          setNotice(notice, e.describe('Cannot stop the recording'));
          stop.disabled = false;
          stop.textContent = 'Stop';
        }
        refresh();
      });
      // Pause / resume (SPEC §11): the paused span is cut out of the files.
      const paused = !!rec.paused;
      const pause = h('button', { class: 'btn small', type: 'button', disabled: rec.state !== 'recording' }, paused ? 'Resume' : 'Pause');
      pause.addEventListener('click', async () => {
        pause.disabled = true;
        try {
          await (paused ? api.resumeRecording(rec.id) : api.pauseRecording(rec.id));
          toast(paused ? `Recording of ${rec.room} resumed` : `Recording of ${rec.room} paused`, 'ok');
        } catch (e) {
          setNotice(notice, e.describe(paused ? 'Cannot resume the recording' : 'Cannot pause the recording'));
        } finally {
          refresh();
        }
      });
      return [pause, stop];
    }
    const whole = (rec.files || []).find((f) => f.name === 'room.webm') || (rec.files || []).find((f) => f.name === 'room-mix.ogg');
    const meeting = [];
    if (whole) {
      const btn = h('button', { class: 'btn primary small', type: 'button', title: `Play ${whole.name}` }, whole.name === 'room.webm' ? 'Play meeting' : 'Play mix');
      btn.addEventListener('click', () => play(rec, whole));
      meeting.push(btn);
    }
    const del = h('button', { class: 'btn ghost small', type: 'button' }, 'Delete');
    let armed = 0;
    del.addEventListener('click', async () => {
      if (!armed) {
        del.textContent = 'Delete files?';
        del.classList.add('danger');
        armed = setTimeout(() => {
          armed = 0;
          del.textContent = 'Delete';
          del.classList.remove('danger');
        }, 4000);
        return;
      }
      clearTimeout(armed);
      del.disabled = true;
      try {
        await api.deleteRecording(rec.id);
        toast('Recording deleted', 'ok');
      } catch (e) {
        setNotice(notice, e.describe('Cannot delete the recording'));
        del.disabled = false;
      }
      refresh();
    });
    return [...meeting, del];
  }

  /** Order of a file in the list: the composite, the mix, then the rest. */
  function rank(name) {
    return name === 'room.webm' ? 0 : name === 'room-mix.ogg' ? 1 : 2;
  }

  function fileRow(rec, file) {
    const playBtn = h('button', { class: 'btn small', type: 'button', title: `Play ${file.name}` }, 'Play');
    playBtn.addEventListener('click', () => play(rec, file));
    const finished = !ACTIVE.has(rec.state);
    playBtn.disabled = !finished;
    if (!finished) playBtn.title = 'Files can be played once the recording is stopped';
    const kind = file.name.endsWith('.ogg') ? 'audio' : 'video';
    return h(
      'li',
      { class: `file ${kind}`, dataset: { file: file.name } },
      h(
        'span',
        { class: 'file-text' },
        h('span', { class: 'file-name', title: file.name }, file.name),
        h('span', { class: 'muted small' }, `${kind === 'audio' ? 'Ogg Opus audio' : 'WebM video'} · `, h('span', { class: 'file-size' }, formatBytes(file.bytes)), uploadBadge(file)),
      ),
      h('span', { class: 'file-actions' }, playBtn, downloadButton(file)),
    );
  }

  /**
   * A file's object storage state (SPEC §7): pending, uploading, uploaded, or retrying with
   * the store's last answer as its tooltip. Empty without storage (`upload` is null).
   */
  function uploadBadge(file) {
    if (!file.upload) return h('span', { class: 'upload' });
    const label = { pending: 'upload pending', uploading: 'uploading…', uploaded: 'in storage', retrying: 'upload retrying' }[file.upload] || file.upload;
    const attrs = { class: `upload upload-${file.upload}` };
    if (file.upload === 'retrying' && file.upload_error) attrs.title = `The store answered: ${file.upload_error}`;
    else if (file.object) attrs.title = file.object;
    return h('span', attrs, ` · ${label}`);
  }

  /** Scrolls to a recording's card, opens it and highlights it briefly. */
  async function reveal(id) {
    if (!cards.has(id)) await refresh();
    const card = cards.get(id);
    if (!card) {
      setNotice(notice, `Recording ${id} is not in the list (it may have been deleted).`);
      return;
    }
    card.details.open = true;
    card.el.scrollIntoView({ behavior: 'smooth', block: 'center' });
    card.el.classList.add('flash');
    setTimeout(() => card.el.classList.remove('flash'), 1600);
  }

  refresh();
  return {
    refresh,
    reveal,
    /** Whether the list has been loaded at least once. */
    loaded: () => loaded,
  };
}

function figure(label, value, cls = '') {
  return [h('dt', {}, label), h('dd', { class: cls }, value)];
}

function sum(items, key) {
  return items.reduce((acc, t) => acc + (Number(t[key]) || 0), 0);
}

/** Bytes of the recording: each file once (muxed tracks share one). */
function totalBytes(rec) {
  const perFile = new Map();
  for (const f of rec.files || []) perFile.set(f.name, f.bytes || 0);
  for (const t of rec.tracks || []) {
    if (t.file) perFile.set(t.file, Math.max(perFile.get(t.file) || 0, t.bytes || 0));
  }
  return [...perFile.values()].reduce((a, b) => a + b, 0);
}

function trackTable(tracks) {
  const row = (t) =>
    h(
      'tr',
      {},
      h('td', { title: t.participant }, t.participant_name || t.participant),
      h('td', {}, h('span', { class: `file-kind ${t.kind}` }, t.kind)),
      h('td', {}, t.codec + (t.width ? ` ${t.width}×${t.height}` : '')),
      h('td', { class: 'num' }, formatDuration(t.duration_ms)),
      h('td', { class: 'num' }, formatBytes(t.bytes)),
      h('td', { class: 'num' + (t.packets_lost ? ' warn' : '') }, formatLoss(t.packets_lost, t.packets)),
    );
  return h(
    'table',
    { class: 'tracks' },
    h('thead', {}, h('tr', {}, ...['Who', 'Kind', 'Codec', 'Length', 'Size', 'Loss'].map((c) => h('th', {}, c)))),
    h('tbody', {}, ...tracks.map(row)),
  );
}
