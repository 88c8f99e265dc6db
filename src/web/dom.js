// Small DOM and formatting helpers shared by the views.

/** Creates an element: h('button', {class: 'x', onclick}, 'text', child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

/** `$('#id')` within `root`. */
export const $ = (selector, root = document) => root.querySelector(selector);

/** 1536 → "1.5 KiB". */
export function formatBytes(n) {
  if (!Number.isFinite(n)) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(n < 10 ? 1 : 0)} ${units[i]}`;
}

/** 65_200 ms → "1:05". */
export function formatDuration(ms) {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  const s = Math.floor(ms / 1000);
  const hours = Math.floor(s / 3600);
  const mm = String(Math.floor((s % 3600) / 60));
  const ss = String(s % 60).padStart(2, '0');
  return hours ? `${hours}:${mm.padStart(2, '0')}:${ss}` : `${mm}:${ss}`;
}

/** An ISO time → "14:03:27" today, or a short date and time. */
export function formatTime(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return iso;
  const sameDay = d.toDateString() === new Date().toDateString();
  return sameDay
    ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' })
    : d.toLocaleString([], { dateStyle: 'short', timeStyle: 'short' });
}

/** Loss as a percentage of the packets expected. */
export function formatLoss(lost, received) {
  const total = (lost || 0) + (received || 0);
  if (!total) return '0%';
  const pct = (100 * (lost || 0)) / total;
  return `${pct < 0.1 && pct > 0 ? '<0.1' : pct.toFixed(pct < 10 ? 1 : 0)}%`;
}

/** Valid room names (SPEC §2). */
export const ROOM_RE = /^[A-Za-z0-9_-]{1,64}$/;

const toasts = () => document.getElementById('toasts');

/** Shows a short message at the corner; kind: 'info' | 'ok' | 'error'. */
export function toast(message, kind = 'info', ms = kind === 'error' ? 8000 : 3500) {
  const el = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status' }, message);
  el.addEventListener('click', () => el.remove());
  toasts().append(el);
  setTimeout(() => el.remove(), ms);
}

/** Shows (or clears, with '') an inline error/notice box. */
export function setNotice(el, message, kind = 'error') {
  el.textContent = message || '';
  el.className = `notice notice-${kind}`;
  el.hidden = !message;
}
