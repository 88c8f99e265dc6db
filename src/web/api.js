// The HTTP API client (SPEC §4 and §6): JSON in and out, the API token as a Bearer header,
// and every failure turned into an ApiError with a message a person can act on.

const TOKEN_KEY = 'recbot.apiToken';

/** The API token typed into the settings (kept for this tab only), or ''. */
export function apiToken() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

/** Stores (or clears, with '') the API token. */
export function setApiToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** An API failure: HTTP status, the API's error code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }

  /** One line for the user: what failed, the server's words, the status and code, a hint. */
  describe(action) {
    const where = action ? `${action}: ` : '';
    if (this.status === 0) return `${where}${this.message}`;
    const hint = HINTS[this.status] ? ` ${HINTS[this.status]}` : '';
    return `${where}${this.message} (${this.status} ${this.code}).${hint}`;
  }
}

const HINTS = {
  401: 'Open Settings and enter the API token.',
  403: 'This page’s origin is not allowed by the service (--allowed-origins).',
};

/** Headers carrying the token, if one is set. */
export function authHeaders(extra = {}) {
  const token = apiToken();
  return token ? { ...extra, Authorization: `Bearer ${token}` } : extra;
}

/** Calls the API and returns the parsed JSON body (null for 204); throws ApiError. */
export async function request(method, path, body) {
  const init = { method, headers: authHeaders() };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    throw new ApiError(0, 'network', `the service cannot be reached (${e.message})`);
  }
  if (response.status === 204) return null;
  const text = await response.text();
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  if (!response.ok) {
    const err = json && json.error;
    const code = (err && err.code) || 'http-' + response.status;
    const message = (err && err.message) || text.trim() || response.statusText || 'request failed';
    throw new ApiError(response.status, code, message);
  }
  return json;
}

export const api = {
  health: () => request('GET', '/healthz'),
  rooms: () => request('GET', '/api/rooms'),
  recordings: () => request('GET', '/api/recordings'),
  recording: (id) => request('GET', `/api/recordings/${encodeURIComponent(id)}`),
  startRecording: (body) => request('POST', '/api/recordings', body),
  stopRecording: (id) => request('POST', `/api/recordings/${encodeURIComponent(id)}/stop`),
  pauseRecording: (id) => request('POST', `/api/recordings/${encodeURIComponent(id)}/pause`),
  resumeRecording: (id) => request('POST', `/api/recordings/${encodeURIComponent(id)}/resume`),
  deleteRecording: (id) => request('DELETE', `/api/recordings/${encodeURIComponent(id)}`),
  bots: () => request('GET', '/api/bots'),
  startBot: (body) => request('POST', '/api/bots', body),
  stopBot: (id) => request('DELETE', `/api/bots/${encodeURIComponent(id)}`),
};

/**
 * A URL a <video>/<audio> element or a download link can use for a recording's file. Without
 * a token that is the file URL itself (Range requests make seeking work). With a token the
 * element cannot send the header, so the file is fetched with it and served from a blob.
 */
export async function playableUrl(url) {
  if (!apiToken()) return { url, revoke() {} };
  let response;
  try {
    response = await fetch(url, { headers: authHeaders() });
  } catch (e) {
    throw new ApiError(0, 'network', `the file cannot be fetched (${e.message})`);
  }
  if (!response.ok) {
    let code = 'http-' + response.status;
    let message = response.statusText;
    try {
      const j = await response.json();
      code = j.error.code;
      message = j.error.message;
    } catch {
      /* not JSON */
    }
    throw new ApiError(response.status, code, message);
  }
  const blobUrl = URL.createObjectURL(await response.blob());
  return { url: blobUrl, revoke: () => URL.revokeObjectURL(blobUrl) };
}
