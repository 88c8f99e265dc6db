// What every browser test shares: Debian's Chromium (or RECBOT_CHROMIUM) and the flags that
// run it headless with fake camera and microphone, loopback peer connections allowed, and
// nothing called out to (any host name but 127.0.0.1 resolves to nothing).

/** The Chromium binary. */
export const CHROMIUM = process.env.RECBOT_CHROMIUM || '/usr/bin/chromium';

/** Command-line flags of every test's Chromium. */
export const FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--use-fake-device-for-media-stream',
  '--use-fake-ui-for-media-stream',
  '--allow-loopback-in-peer-connection',
  '--disable-domain-reliability',
  '--disable-client-side-phishing-detection',
  '--no-pings',
  '--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1',
];
