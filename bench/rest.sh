#!/usr/bin/env bash
# REST tap throughput: N records (default 100,000) served by tests/cli/fake_api.py on loopback
# in pages of 100, read by `ferry tap bench/rest/bench.yml`, beside the physical reference:
# curl fetching the same pages over one keep-alive connection (what the server and the loopback
# can do at all). Also into a JSON-lines target, and peak memory at N and 3N records.
#
#   bench/rest.sh             # N=100000
#   N=20000 bench/rest.sh     # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
# shellcheck source=../.ci/libduckdb.sh
. .ci/libduckdb.sh
# shellcheck disable=SC2086
cargo build --release --quiet $FERRY_CARGO_FEATURES
FERRY="$CARGO_TARGET_DIR/release/ferry"
W="$PWD/bench/work-rest"
rm -rf "$W"; mkdir -p "$W"

serve() { # serve N -> sets PORT, PID
  coproc SERVER { exec python3 tests/cli/fake_api.py --bench-records "$1"; }
  read -r _ PORT <&"${SERVER[0]}"
  PID=$SERVER_PID
}
serve "$N"
trap 'kill $PID 2>/dev/null || true' EXIT
PAGES=$(( (N + 99) / 100 ))
URLS="http://127.0.0.1:$PORT/bench/items?page=[1-$PAGES]&per_page=100"
# Warm the server's page cache so every run measures the same thing.
curl -s -o /dev/null "$URLS"
echo '{"base_url": "http://127.0.0.1:'"$PORT"'"}' > "$W/c.json"
echo '{"destination_path": "'"$W"'/out"}' > "$W/t.json"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); N=$N records in $PAGES pages"

hyperfine --warmup 1 --runs 5 --export-json "$W/results.json" --export-markdown "$W/results.md" \
  -n "curl, same pages (reference)" "curl -s -o /dev/null '$URLS'" \
  -n "ferry tap (records to stdout)" "$FERRY -q tap bench/rest/bench.yml --config $W/c.json > /dev/null" \
  -n "ferry tap | ferry target jsonl" "rm -rf $W/out && $FERRY -q tap bench/rest/bench.yml --config $W/c.json | $FERRY -q target jsonl --config $W/t.json > /dev/null"
python3 - "$W/results.json" "$N" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))["results"]; n = int(sys.argv[2])
ref = r[0]["mean"]
for x in r:
    print(f'{x["command"]:<36} {x["mean"]:7.3f} s  {n / x["mean"]:>10,.0f} records/s  {x["mean"] / ref:5.2f}x curl')
PY

peak() { /usr/bin/time -v "$@" 2>&1 >/dev/null | awk -F': ' '/Maximum resident/{print $2}'; }
echo "peak RSS, ferry tap at N=$N: $(peak "$FERRY" -q tap bench/rest/bench.yml --config "$W/c.json") KB"
kill "$PID"; wait "$PID" 2>/dev/null || true
serve $((3 * N))
echo '{"base_url": "http://127.0.0.1:'"$PORT"'"}' > "$W/c.json"
echo "peak RSS, ferry tap at N=$((3 * N)): $(peak "$FERRY" -q tap bench/rest/bench.yml --config "$W/c.json") KB"
