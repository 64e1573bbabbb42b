#!/usr/bin/env bash
# Whole-process benchmark of the core path: N Singer records (10 fields) through
#   - `ferry target jsonl` (parse, validate, write, fsync), beside `cat` copying the same bytes
#     (the physical floor) and the Python `target-jsonl` from PyPI (what users would otherwise run);
#   - `ferry tap csv | ferry target jsonl` and `ferry sync` of the same rows from CSV;
# plus peak memory at N and 3N records (it must stay flat) and `ferry --version` start-up.
#
#   bench/pipeline.sh            # N=1000000
#   N=200000 bench/pipeline.sh   # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
# shellcheck source=../.ci/libduckdb.sh
. .ci/libduckdb.sh  # link the prebuilt DuckDB, as ./test.sh does
# shellcheck disable=SC2086
cargo build --release --quiet $FERRY_CARGO_FEATURES
FERRY="$CARGO_TARGET_DIR/release/ferry"
W="$PWD/bench/work"
rm -rf "$W"; mkdir -p "$W"

gen() { # gen N FILE.jsonl FILE.csv
python3 - "$@" <<'PY'
import sys
n, jl, cs = int(sys.argv[1]), sys.argv[2], sys.argv[3]
with open(jl, "w") as j, open(cs, "w") as c:
    j.write('{"type":"SCHEMA","stream":"orders","key_properties":["id"],"schema":{"type":"object","properties":{"id":{"type":"integer"},"customer_id":{"type":"integer"},"status":{"type":"string"},"total":{"type":"number"},"currency":{"type":"string"},"placed_at":{"type":"string","format":"date-time"},"is_gift":{"type":"boolean"},"items":{"type":"integer"},"note":{"type":["null","string"]},"discount":{"type":["null","number"]}}}}\n')
    c.write("id,customer_id,status,total,currency,placed_at,is_gift,items,note,discount\n")
    for i in range(n):
        t = f"{i % 997}.{i % 100:02d}"; d = f"2026-11-{1 + i % 28:02d}T10:{i % 60:02d}:00.000000Z"; g = "true" if i % 7 == 0 else "false"
        j.write(f'{{"type":"RECORD","stream":"orders","record":{{"id":{i},"customer_id":{i % 5000},"status":"paid","total":{t},"currency":"EUR","placed_at":"{d}","is_gift":{g},"items":{1 + i % 5},"note":"order {i}","discount":null}}}}\n')
        if i % 10000 == 9999:
            j.write(f'{{"type":"STATE","value":{{"bookmarks":{{"orders":{{"id":{i}}}}}}}}}\n')
        c.write(f"{i},{i % 5000},paid,{t},EUR,{d},{g},{1 + i % 5},order {i},\n")
    j.write(f'{{"type":"STATE","value":{{"bookmarks":{{"orders":{{"id":{n}}}}}}}}}\n')
PY
}
gen "$N" "$W/msgs.jsonl" "$W/orders.csv"
echo '{"destination_path": "'"$W"'/out"}' > "$W/t.json"
echo '{"destination_path": "'"$W"'/py-out", "do_timestamp_file": false}' > "$W/py.json"
echo '{"files": [{"entity": "orders", "path": "'"$W"'/orders.csv", "keys": ["id"]}]}' > "$W/tap.json"
cat > "$W/ferry.yml" <<YML
pipelines:
  bench:
    tap: { name: csv, config_file: tap.json }
    target: { name: jsonl, config: { destination_path: sync-out } }
YML
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); N=$N records, $(du -m "$W/msgs.jsonl" | cut -f1) MB of messages"

PY_TARGET=""
# SKIP_PYTHON=1 leaves out the (slow: over a minute per run) Python target.
[ -n "${SKIP_PYTHON:-}" ] || for v in "${FERRY_CACHE:-$HOME/.cache/ferry}/venv-target-jsonl/bin/target-jsonl" "$(command -v target-jsonl || true)"; do
  [ -x "$v" ] && PY_TARGET="$v" && break
done

args=(--warmup 1 --runs 3 --export-markdown "$W/results.md"
  -n "cat (copy the bytes: floor)" "cat $W/msgs.jsonl > $W/copy.jsonl && sync $W/copy.jsonl"
  -n "ferry target jsonl" "rm -rf $W/out && $FERRY -q target jsonl --config $W/t.json --input $W/msgs.jsonl > /dev/null"
  -n "ferry tap csv | ferry target jsonl" "rm -rf $W/out && $FERRY -q tap csv --config $W/tap.json | $FERRY -q target jsonl --config $W/t.json > /dev/null"
  -n "ferry sync (csv to jsonl, one process)" "cd $W && rm -rf sync-out state && $FERRY -q sync bench")
if [ -n "$PY_TARGET" ]; then
  args+=(-n "python target-jsonl 0.1.4" "rm -rf $W/py-out && $PY_TARGET --config $W/py.json < $W/msgs.jsonl > /dev/null")
fi
hyperfine "${args[@]}"
cat "$W/results.md"

echo; echo "peak memory (max RSS) of ferry target jsonl:"
for n in "$N" "$((N * 3))"; do
  [ "$n" != "$N" ] && gen "$n" "$W/msgs3.jsonl" "$W/orders3.csv"
  f="$W/msgs.jsonl"; [ "$n" != "$N" ] && f="$W/msgs3.jsonl"
  rm -rf "$W/out"
  /usr/bin/time -v "$FERRY" -q target jsonl --config "$W/t.json" --input "$f" 2> "$W/time.txt" > /dev/null
  echo "  $n records: $(awk -F': ' '/Maximum resident/{print $2}' "$W/time.txt") KB"
done

echo; hyperfine --warmup 3 --runs 50 -N "$FERRY --version" | grep -E "Time|Range"
