#!/usr/bin/env bash
# Postgres target benchmark: N rows of a 10-column table loaded by `ferry target postgres`,
# beside Postgres' own `COPY … TO STDOUT | COPY … FROM STDIN` of the same rows (the physical
# floor), measured in the same run; then an upsert of 1% changed rows into the loaded table, and
# peak memory at N and 3N rows.
#
# The messages are made by SQL (the Postgres tap is a later issue), so this measures the load
# side: parse, validate, COPY into staging, merge.
#
#   bench/postgres.sh          # N=1000000, database `test` on 127.0.0.1 as postgres
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
cargo build --release --quiet
FERRY="$CARGO_TARGET_DIR/release/ferry"
W="$PWD/bench/work-pg"; rm -rf "$W"; mkdir -p "$W"
PSQL=(psql -X -q -h "${FERRY_PG_HOST:-127.0.0.1}" -U "${FERRY_PG_USER:-postgres}" -d "${FERRY_PG_DB:-test}" -v ON_ERROR_STOP=1)
S=ferry_bench
"${PSQL[@]}" -c "DROP SCHEMA IF EXISTS $S CASCADE; CREATE SCHEMA $S;
  CREATE TABLE $S.src (id bigint PRIMARY KEY, customer_id bigint, status text, total numeric(12,2), currency text,
    placed_at timestamptz, is_gift boolean, items integer, note text, meta jsonb);
  INSERT INTO $S.src SELECT i, i % 5000, (ARRAY['paid','shipped','refunded'])[1 + i % 3], (i % 99991) / 100.0, 'EUR',
    timestamptz '2026-01-01' + i * interval '1 second', i % 7 = 0, 1 + i % 5, 'order ' || i || ' — ü',
    jsonb_build_object('src', 'web', 'n', i % 10)
  FROM generate_series(1, $N) i;
  CREATE TABLE $S.dst (LIKE $S.src INCLUDING ALL);"

msgs() { # msgs WHERE FILE: Singer messages for the rows matching WHERE
  {
    echo '{"type":"SCHEMA","stream":"orders","key_properties":["id"],"schema":{"type":"object","properties":{"id":{"type":"integer"},"customer_id":{"type":["null","integer"]},"status":{"type":["null","string"]},"total":{"type":["null","string"],"format":"x-singer.decimal","precision":12,"scale":2},"currency":{"type":["null","string"]},"placed_at":{"type":["null","string"],"format":"date-time"},"is_gift":{"type":["null","boolean"]},"items":{"type":["null","integer"]},"note":{"type":["null","string"]},"meta":{"type":["null","object"]}}}}'
    "${PSQL[@]}" -At -c "SELECT json_build_object('type','RECORD','stream','orders','record',
        json_build_object('id',id,'customer_id',customer_id,'status',status,'total',total::text,'currency',currency,
          'placed_at',placed_at,'is_gift',is_gift,'items',items,'note',note,'meta',meta)) FROM $S.src WHERE $1 ORDER BY id"
    echo '{"type":"STATE","value":{"bookmarks":{"orders":{"done":true}}}}'
  } > "$2"
}
msgs true "$W/msgs.jsonl"
echo "{\"host\":\"${FERRY_PG_HOST:-127.0.0.1}\",\"user\":\"${FERRY_PG_USER:-postgres}\",\"dbname\":\"${FERRY_PG_DB:-test}\",\"default_target_schema\":\"ferry_bench_out\"}" > "$W/t.json"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); N=$N rows, $(du -m "$W/msgs.jsonl" | cut -f1) MB of messages"

hyperfine --warmup 1 --runs 3 --export-markdown "$W/results.md" \
  -n "psql COPY src TO STDOUT | psql COPY dst FROM STDIN (floor)" \
  --prepare "${PSQL[*]} -c 'TRUNCATE $S.dst'" \
  "${PSQL[*]} -c 'COPY $S.src TO STDOUT' | ${PSQL[*]} -c 'COPY $S.dst FROM STDIN'" \
  -n "ferry target postgres (into an empty table)" \
  --prepare "${PSQL[*]} -c 'DROP SCHEMA IF EXISTS ferry_bench_out CASCADE'" \
  "$FERRY -q target postgres --config $W/t.json --input $W/msgs.jsonl > /dev/null"
cat "$W/results.md"

# Upsert: 1% of the rows changed, into the loaded table.
"${PSQL[@]}" -c "UPDATE $S.src SET status = 'changed' WHERE id % 100 = 0"
msgs "id % 100 = 0" "$W/changed.jsonl"
hyperfine --runs 5 -n "ferry target postgres: upsert of $((N / 100)) changed rows into $N" \
  "$FERRY -q target postgres --config $W/t.json --input $W/changed.jsonl > /dev/null" | grep -E "Time|Range"
"${PSQL[@]}" -At -c "SELECT 'check: ' || count(*) FILTER (WHERE status = 'changed') || ' changed of ' || count(*) FROM ferry_bench_out.orders"

echo; echo "peak memory (max RSS) of ferry target postgres:"
for mult in 1 3; do
  f="$W/msgs.jsonl"
  if [ "$mult" = 3 ]; then
    f="$W/msgs3.jsonl"; head -n -1 "$W/msgs.jsonl" > "$f"
    for k in 1 2; do
      # The same records again with shifted ids: 3N distinct rows.
      sed -n '2,$p' "$W/msgs.jsonl" | head -n -1 | sed -E "s/\"id\" : ([0-9]+)/\"id\" : \10000000$k/; s/\"id\":([0-9]+)/\"id\":\10000000$k/" >> "$f"
    done
    tail -n 1 "$W/msgs.jsonl" >> "$f"
  fi
  "${PSQL[@]}" -c "DROP SCHEMA IF EXISTS ferry_bench_out CASCADE"
  /usr/bin/time -v "$FERRY" -q target postgres --config "$W/t.json" --input "$f" 2> "$W/time.txt" > /dev/null
  echo "  $((N * mult)) rows: $(awk -F': ' '/Maximum resident/{print $2}' "$W/time.txt") KB ($("${PSQL[@]}" -At -c 'SELECT count(*) FROM ferry_bench_out.orders') loaded)"
done
"${PSQL[@]}" -c "DROP SCHEMA IF EXISTS $S CASCADE; DROP SCHEMA IF EXISTS ferry_bench_out CASCADE"
