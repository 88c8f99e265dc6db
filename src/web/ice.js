// Loopback-only ICE: a test aid, enabled with `?loopback=1` in the page URL.
//
// With it, the page drops every ICE candidate whose address is not a loopback address, on
// both sides: the local candidates it would send and the remote ones it would add (trickled
// or inside an SDP). No connectivity check then targets a LAN address, so a browser test on
// one machine sends media over 127.0.0.1 / ::1 only.

/** Whether the page runs in loopback-only mode. */
export const loopbackOnly = new URLSearchParams(location.search).get('loopback') === '1';

/** The connection address of a `candidate:` line (the 5th field), or null. */
export function candidateAddress(line) {
  const fields = String(line || '').replace(/^a=/, '').trim().split(/\s+/);
  return fields.length >= 8 ? fields[4] : null;
}

/** Whether an address is a loopback address (127.0.0.0/8 or ::1). */
export function isLoopback(address) {
  if (!address) return false;
  const a = address.replace(/^\[|\]$/g, '').toLowerCase();
  return /^127\.\d+\.\d+\.\d+$/.test(a) || a === '::1' || a === '0:0:0:0:0:0:0:1';
}

/** Candidates kept and dropped so far in loopback mode (the browser test reads them). */
export const iceStats = { kept: 0, dropped: 0 };

/** Whether a candidate line may be used (always true outside loopback mode). */
export function keepCandidate(line) {
  if (!loopbackOnly) return true;
  const keep = isLoopback(candidateAddress(line));
  iceStats[keep ? 'kept' : 'dropped'] += 1;
  return keep;
}

/** The SDP without the `a=candidate` lines that loopback mode drops. */
export function filterSdp(sdp) {
  if (!loopbackOnly) return sdp;
  return sdp
    .split('\r\n')
    .filter((l) => !l.startsWith('a=candidate:') || keepCandidate(l))
    .join('\r\n');
}
