// Entry point: wires the views together (room, recordings, bots), the tabs, the settings
// and the service status.

import { api, apiToken, setApiToken } from './api.js';
import { initBots } from './bots.js';
import { $, toast } from './dom.js';
import { iceStats, loopbackOnly } from './ice.js';
import { initRecordings } from './recordings.js';
import { initRoom } from './room.js';

const ROOM_TOKEN_KEY = 'recbot.roomToken';

const recordings = initRecordings();
const bots = initBots({
  showRecordings(id) {
    selectTab('recordings');
    recordings.reveal(id);
  },
});

initRoom({
  roomToken: () => sessionStorage.getItem(ROOM_TOKEN_KEY) || '',
  joined(room) {
    for (const id of ['#rec-room', '#bot-room']) $(id).value = room;
    document.body.classList.add('in-call');
  },
  left() {
    document.body.classList.remove('in-call');
  },
  recording() {
    recordings.refresh();
  },
});

// Tabs.
function selectTab(name) {
  for (const tab of document.querySelectorAll('.tab')) {
    const on = tab.id === `tab-${name}`;
    tab.setAttribute('aria-selected', String(on));
    $(`#${tab.getAttribute('aria-controls')}`).hidden = !on;
  }
  bots.setVisible(name === 'bots');
  if (name === 'recordings') recordings.refresh();
}
$('#tab-recordings').addEventListener('click', () => selectTab('recordings'));
$('#tab-bots').addEventListener('click', () => selectTab('bots'));

// Settings: tokens live in this tab's sessionStorage, never in the URL.
const settings = $('#settings');
$('#settings-open').addEventListener('click', () => {
  $('#set-api-token').value = apiToken();
  $('#set-room-token').value = sessionStorage.getItem(ROOM_TOKEN_KEY) || '';
  settings.returnValue = '';
  settings.showModal();
});
settings.addEventListener('close', () => {
  if (settings.returnValue !== 'save') return;
  setApiToken($('#set-api-token').value.trim());
  const roomToken = $('#set-room-token').value.trim();
  if (roomToken) sessionStorage.setItem(ROOM_TOKEN_KEY, roomToken);
  else sessionStorage.removeItem(ROOM_TOKEN_KEY);
  toast('Settings saved', 'ok');
  recordings.refresh();
});

// Test aid: in loopback mode the candidate counts can be read from the console.
if (loopbackOnly) window.recbotIceStats = iceStats;

// Service status.
async function health() {
  const el = $('#health');
  try {
    await api.health();
    el.dataset.state = 'ok';
    el.querySelector('.health-text').textContent = loopbackOnly ? 'online · loopback ICE' : 'online';
  } catch {
    el.dataset.state = 'down';
    el.querySelector('.health-text').textContent = 'offline';
  }
}
health();
setInterval(health, 10_000);
