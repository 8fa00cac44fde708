#!/usr/bin/env bash
# The geoloc demo on the shipped data (what `./run demo` runs after building):
#
#   1. builds the naip-xtime reference map of the east half from three years
#      of imagery (2018, 2019, 2020: one tile per place, each scored by its
#      best year) with the shipped model, dense layer included;
#   2. simulates a drone flight over it in the 2012 imagery, which the map was
#      not built from (make-flights: 5-20 m/s, a frame every 0.5-1 s, heading
#      along the path, tilted camera; with 40 frames or more, a gap in the
#      frames and a "kidnap", a jump to a place 1 km or more away);
#   3. starts geolocd on 127.0.0.1 (a free port) serving that model and map;
#   4. streams the flight through `geoloc eval --connect --flights` as a
#      tracked stream (each frame carries its capture time and its compass
#      heading with 10 degrees of error, as a drone's telemetry does; the
#      daemon turns it north-up, runs the fine stage over the map's dense
#      layer and steps the stream's tracker): a row per frame (the frame's
#      own estimate and error, the track's status and error), the summary,
#      the per-frame and tracked figures side by side, and a report picture;
#   5. stops the daemon with SIGTERM and checks that it exited cleanly.
#
# usage: tools/demo.sh BUILD_DIR OUT_DIR [FRAMES]
# Exit status: 0 when every step worked and every frame was answered.
set -euo pipefail

BUILD=$(cd "${1:?usage: demo.sh BUILD_DIR OUT_DIR [FRAMES]}" && pwd)
OUT=${2:?usage: demo.sh BUILD_DIR OUT_DIR [FRAMES]}
FRAMES=${3:-100}
SRC=$(cd "$(dirname "$0")/.." && pwd)
GEOLOC=$BUILD/tools/geoloc
GEOLOCD=$BUILD/daemon/geolocd
MODEL=$SRC/data/models/geoloc-naip-mnv2-64.safetensors
NAIP=$SRC/data/naip
REF=$NAIP/m_4709963_se_14_1_20200831.tif
YEARS=("$REF" "$NAIP/m_4709963_se_14_1_20190904.tif" "$NAIP/m_4709963_se_14_1_20180716.tif")
PY=(env PYTHONPATH="$SRC/python" /usr/bin/python3 -m geoloc_train)

step() { printf '\033[1m--> %s\033[0m\n' "$*"; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

for f in "$GEOLOC" "$GEOLOCD" "$MODEL" "${YEARS[@]}"; do
  [ -e "$f" ] || die "$f is missing"
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

step "reference map: 2018-2020 imagery, east half of the naip-xtime area"
BBOX=$("${PY[@]}" xtime-bbox --naip "$NAIP")
"$GEOLOC" map build --model "$MODEL" "${YEARS[@]/#/--ortho=}" --bbox "$BBOX" \
  --out "$OUT/demo.map" 2>&1 | tail -n 1

step "demo flight: $FRAMES frames of 2012 imagery"
rm -rf "$OUT/flight"
EVENTS=()
[ "$FRAMES" -ge 40 ] || EVENTS=(--no-events)
"${PY[@]}" make-flights --naip "$NAIP" --out "$OUT/flight" --flights 1 --years 2012 \
  --frames "$FRAMES" --seed 7 "${EVENTS[@]}"

PORT=$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$OUT/geolocd.conf" <<EOF
; written by tools/demo.sh: plaintext on loopback, the shipped model, the demo map
[listen]
tcp = 127.0.0.1:$PORT
[model]
path = $MODEL
[map naip-east]
path = $OUT/demo.map
EOF

step "starting geolocd on 127.0.0.1:$PORT (log: $OUT/geolocd.log)"
"$GEOLOCD" --config "$OUT/geolocd.conf" 2>"$OUT/geolocd.log" &
DAEMON=$!
trap 'kill -KILL $DAEMON 2>/dev/null || true' EXIT
ready=0
for _ in $(seq 1 300); do
  kill -0 "$DAEMON" 2>/dev/null || { cat "$OUT/geolocd.log" >&2; die "geolocd exited"; }
  if "$GEOLOC" ping --connect "127.0.0.1:$PORT" --count 1 >/dev/null 2>&1; then
    ready=1
    break
  fi
  sleep 0.2
done
[ "$ready" -eq 1 ] || { cat "$OUT/geolocd.log" >&2; die "geolocd did not answer within 60 s"; }

step "streaming the flight through geolocd, tracked, each frame with its compass heading"
status=0
"$GEOLOC" eval --connect "127.0.0.1:$PORT" --flights "$OUT/flight" --use-heading \
  --heading-noise 10 --per-frame --pack "$OUT/demo.map" --report "$OUT/report.png" || status=$?

step "stopping geolocd"
kill -TERM "$DAEMON"
drc=0
wait "$DAEMON" || drc=$?
trap - EXIT
[ "$drc" -eq 0 ] || { cat "$OUT/geolocd.log" >&2; die "geolocd exited with status $drc"; }
[ "$status" -eq 0 ] || die "geoloc eval failed (status $status)"
echo "report: $OUT/report.png (truths green, single-frame estimates red, the track blue, over"
echo "the 2020 imagery)"
