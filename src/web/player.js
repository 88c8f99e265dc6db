// The playback dialog: a recording's file in <video> or <audio>, straight from the files API
// (the server answers Range requests, so seeking works), and downloads.

import { apiToken, playableUrl } from './api.js';
import { $, h, formatBytes, setNotice, toast } from './dom.js';

const dialog = () => $('#player');
let release = () => {};

/** Whether a file plays as video (.webm) or audio (.ogg). */
export function mediaKind(name) {
  return name.endsWith('.webm') ? 'video' : 'audio';
}

/** Opens the dialog and plays `file` ({name, url, bytes}) of recording `rec`. */
export async function play(rec, file) {
  const dlg = dialog();
  const box = $('#player-media');
  const notice = $('#player-notice');
  release();
  box.replaceChildren();
  setNotice(notice, '');
  $('#player-title').textContent = file.name;
  $('#player-info').textContent = `Room ${rec.room} · recording ${rec.id} · ${formatBytes(file.bytes)}`;
  const kind = mediaKind(file.name);
  const el = h(kind, { controls: true, preload: 'metadata', class: 'media', dataset: { file: file.name } });
  el.addEventListener('error', () => {
    const err = el.error;
    setNotice(notice, `The browser cannot play this file${err ? ` (${err.message || 'code ' + err.code})` : ''}.`);
  });
  box.append(el, h('div', { class: 'player-actions' }, downloadButton(file)));
  if (!dlg.open) dlg.showModal();
  try {
    const source = await playableUrl(file.url);
    release = source.revoke;
    el.src = source.url;
  } catch (e) {
    setNotice(notice, e.describe ? e.describe('Cannot load the file') : e.message);
  }
}

/** A download link for `file`; with an API token it fetches the bytes with the header first. */
export function downloadButton(file, label = 'Download') {
  const link = h('a', { class: 'btn ghost small', href: file.url, download: file.name }, label);
  link.addEventListener('click', async (event) => {
    if (!apiToken()) return; // the browser follows the link itself
    event.preventDefault();
    try {
      const source = await playableUrl(file.url);
      const a = h('a', { href: source.url, download: file.name });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(source.revoke, 60_000);
    } catch (e) {
      toast(e.describe ? e.describe(`Download of ${file.name}`) : e.message, 'error');
    }
  });
  return link;
}

dialog()?.addEventListener('close', () => {
  for (const el of $('#player-media').querySelectorAll('video, audio')) {
    el.pause();
    el.removeAttribute('src');
    el.load();
  }
  release();
  release = () => {};
});
