// The bots view (SPEC §6): start an answering bot (echo, play, voicemail) in a room, see
// its state, stop it.

import { api } from './api.js';
import { $, h, formatTime, ROOM_RE, setNotice, toast } from './dom.js';

const MODE_LABEL = { echo: 'Echo', play: 'Play', voicemail: 'Voicemail' };

export function initBots({ showRecordings }) {
  const list = $('#bot-list');
  const notice = $('#bot-notice');
  const form = $('#bot-form');
  const mode = $('#bot-mode');
  let timer = 0;
  let visible = false;

  const syncFields = () => {
    for (const el of form.querySelectorAll('[data-for]')) {
      el.hidden = !el.dataset.for.split(' ').includes(mode.value);
    }
    $('#bot-media').required = mode.value === 'play';
    $('#bot-media').placeholder = mode.value === 'play' ? 'clip.webm (in the media folder)' : 'built-in tone';
  };
  mode.addEventListener('change', syncFields);
  syncFields();

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const room = $('#bot-room').value.trim();
    if (!ROOM_RE.test(room)) {
      setNotice(notice, 'A room name is 1 to 64 characters of letters, digits, _ and -.');
      return;
    }
    const body = { room, mode: mode.value };
    const media = $('#bot-media').value.trim();
    if (mode.value !== 'echo' && media) body.media = media;
    if (mode.value === 'play' && $('#bot-loop').checked) body.loop = true;
    if (mode.value === 'voicemail') {
      const silence = parseFloat($('#bot-silence').value);
      const max = parseFloat($('#bot-max').value);
      if (silence > 0) body.silence_s = silence;
      if (max > 0) body.max_duration_s = max;
    }
    const button = $('#bot-start');
    button.disabled = true;
    try {
      const bot = await api.startBot(body);
      setNotice(notice, '');
      toast(`${MODE_LABEL[bot?.mode] || 'A'} bot joined room ${room}`, 'ok');
    } catch (e) {
      setNotice(notice, explain(e, `Cannot start the bot in room “${room}”`));
    } finally {
      button.disabled = false;
      refresh();
    }
  });

  function explain(e, action) {
    if (e.status === 404 || e.status === 405) {
      return `${e.describe(action)} This server does not offer the bots API (POST/GET/DELETE /api/bots) yet.`;
    }
    return e.describe(action);
  }

  async function refresh() {
    clearTimeout(timer);
    try {
      const reply = await api.bots();
      const bots = Array.isArray(reply) ? reply : reply?.bots || [];
      render(bots);
      if (notice.dataset.source === 'list') setNotice(notice, '');
    } catch (e) {
      setNotice(notice, explain(e, 'Cannot load the bots'));
      notice.dataset.source = 'list';
      list.replaceChildren();
    }
    if (visible) timer = setTimeout(refresh, 2000);
  }

  function render(bots) {
    if (!bots.length) {
      list.replaceChildren(h('p', { class: 'empty' }, 'No bots. Start one to test a call: Echo sends you back your own camera and microphone.'));
      return;
    }
    // Rebuild only changed cards, so a click never lands on a replaced button.
    const old = new Map([...list.querySelectorAll('.bot-card')].map((el) => [el.dataset.id, el]));
    const cards = bots.map((bot) => {
      const key = JSON.stringify(bot);
      const existing = old.get(bot.id);
      return existing && existing.dataset.key === key ? existing : card(bot, key);
    });
    list.replaceChildren(...cards);
  }

  function card(bot, key) {
    const stop = h('button', { class: 'btn danger small', type: 'button' }, 'Stop');
    stop.addEventListener('click', async () => {
      stop.disabled = true;
      stop.textContent = 'Stopping…';
      try {
        await api.stopBot(bot.id);
        setNotice(notice, '');
        toast('Bot stopped', 'ok');
      } catch (e) {
        setNotice(notice, explain(e, 'Cannot stop the bot'));
        notice.dataset.source = 'action';
        stop.disabled = false;
        stop.textContent = 'Stop';
      }
      refresh();
    });
    const peers = bot.peers || [];
    const recordings = bot.recordings || [];
    const active = bot.state !== 'stopped';
    const settings = [
      bot.media ? `media ${bot.media}` : bot.mode === 'voicemail' ? 'built-in greeting' : null,
      bot.loop ? 'looping' : null,
      bot.silence_s ? `ends after ${bot.silence_s} s of silence` : null,
      bot.max_duration_s && bot.mode === 'voicemail' ? `at most ${bot.max_duration_s} s` : null,
    ].filter(Boolean);
    return h(
      'article',
      { class: 'card bot-card', dataset: { id: bot.id, key, state: bot.state || '' } },
      h(
        'header',
        { class: 'card-head' },
        h(
          'div',
          { class: 'card-title' },
          h('span', { class: `state state-${bot.state || 'unknown'}` }, bot.state || 'unknown'),
          h('strong', {}, `${MODE_LABEL[bot.mode] || bot.mode} · ${bot.room}`),
          h('span', { class: 'muted small' }, `${formatTime(bot.started_at)} · ${bot.id}`),
        ),
        h('div', { class: 'card-actions' }, active ? stop : null),
      ),
      settings.length ? h('p', { class: 'small muted bot-settings' }, settings.join(' · ')) : null,
      h(
        'dl',
        { class: 'figures' },
        h('dt', {}, 'Connected'),
        h('dd', {}, `${peers.length} ${peers.length === 1 ? 'peer' : 'peers'}`),
        h('dt', {}, 'Messages'),
        h('dd', {}, bot.mode === 'voicemail' ? String(recordings.length) : '–'),
        h('dt', {}, 'Stopped'),
        h('dd', {}, bot.stopped_at ? formatTime(bot.stopped_at) : '–'),
      ),
      recordings.length
        ? h(
            'p',
            { class: 'small bot-recordings' },
            'Messages: ',
            ...recordings.map((id) =>
              h('a', { href: '#', onclick: (e) => (e.preventDefault(), showRecordings(id)) }, id),
            ),
          )
        : null,
    );
  }

  return {
    /** Starts or stops polling as the tab shows or hides. */
    setVisible(on) {
      visible = on;
      if (on) refresh();
      else clearTimeout(timer);
    },
  };
}
