#!/usr/bin/env bash
# Records N `recbot publish` peers for S seconds and prints the server's CPU time and RSS.
# Usage: benches/record_load.sh N S   (builds the release binary first; loopback only)
set -euo pipefail
cd "$(dirname "$0")/.."
N="${1:-1}"; S="${2:-30}"
PORT="${PORT:-18080}"
cargo build --release --quiet
BIN=target/release/recbot
DIR="$(mktemp -d)"
cleanup() {
  kill "$PUB" 2>/dev/null || true; wait "$PUB" 2>/dev/null || true
  kill "$SRV" 2>/dev/null || true; wait "$SRV" 2>/dev/null || true
  rm -rf "$DIR"
}
trap cleanup EXIT
"$BIN" serve --listen "127.0.0.1:$PORT" --recordings-dir "$DIR" --udp-bind 127.0.0.1 --log warn &
SRV=$!
sleep 0.5
"$BIN" publish --server "http://127.0.0.1:$PORT" --room bench --video tests/data/clip.ivf \
  --audio tests/data/tone.ogg --count "$N" --name pub >/dev/null 2>&1 &
PUB=$!
sleep 2
ticks() { awk '{print $14 + $15}' "/proc/$SRV/stat"; }
HZ=$(getconf CLK_TCK)
T0=$(ticks)
ID=$(curl -sf -XPOST "127.0.0.1:$PORT/api/recordings" -H 'content-type: application/json' \
  -d '{"room":"bench"}' | sed -E 's/.*"id":"([^"]+)".*/\1/')
sleep "$S"
START=$(date +%s.%N)
curl -sf -XPOST "127.0.0.1:$PORT/api/recordings/$ID/stop" -o "$DIR/stopped.json"
END=$(date +%s.%N)
T1=$(ticks)
RSS=$(awk '/VmHWM/ {print $2}' "/proc/$SRV/status")
FILES=$(ls "$DIR/$ID" | grep -c -E '\.(webm|ogg)$' || true)
python3 - "$DIR/stopped.json" "$N" "$S" "$T0" "$T1" "$HZ" "$RSS" "$START" "$END" "$FILES" <<'PY'
import json, sys
doc = json.load(open(sys.argv[1]))
n, s, t0, t1, hz, rss, start, end, files = sys.argv[2:]
cpu = (int(t1) - int(t0)) / int(hz)
tracks = doc["tracks"]
lost = sum(t["packets_lost"] for t in tracks)
pkts = sum(t["packets"] for t in tracks)
print(f"publishers={n} seconds={s} files={files} tracks={len(tracks)} packets={pkts} lost={lost}")
print(f"server CPU during recording: {cpu:.2f} s ({cpu/float(s)*100:.1f}% of one core)")
print(f"server peak RSS: {int(rss)/1024:.1f} MiB")
print(f"stop (finalize) took {float(end)-float(start):.3f} s")
PY
