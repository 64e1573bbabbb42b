#!/usr/bin/env bash
# Postgres benchmarks, each beside Postgres' own COPY measured in the same run:
#   1. extraction: `ferry tap postgres` of an N-row, 10-column table to /dev/null, vs
#      `psql -c "COPY src TO STDOUT" > /dev/null`;
#   2. load: `ferry sync` of that table into an empty Postgres table, vs
#      `psql -c "COPY src TO STDOUT" | psql -c "COPY dst FROM STDIN"`;
#   3. incremental: after 1% of the rows change, the INCREMENTAL sync that picks them up and
#      upserts them into the loaded table;
#   4. peak memory of the sync at N and 10N rows (it must stay flat; goal: under 100 MB).
#
#   bench/postgres.sh          # N=1000000, database `test` on 127.0.0.1 as postgres
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
# shellcheck source=../.ci/libduckdb.sh
. .ci/libduckdb.sh  # link the prebuilt DuckDB, as ./test.sh does
# shellcheck disable=SC2086
cargo build --release --quiet $FERRY_CARGO_FEATURES
FERRY="$CARGO_TARGET_DIR/release/ferry"
W="$PWD/bench/work-pg"; rm -rf "$W"; mkdir -p "$W"
HOST=${FERRY_PG_HOST:-127.0.0.1} USER_=${FERRY_PG_USER:-postgres} DB=${FERRY_PG_DB:-test}
PSQL="psql -X -q -h $HOST -U $USER_ -d $DB -v ON_ERROR_STOP=1"
S=ferry_bench

make_src() { # make_src ROWS
  $PSQL -c "DROP SCHEMA IF EXISTS $S CASCADE; DROP SCHEMA IF EXISTS ${S}_out CASCADE; CREATE SCHEMA $S;
    CREATE TABLE $S.src (id bigint PRIMARY KEY, customer_id bigint, status text, total numeric(12,2), placed_at timestamptz,
      is_gift boolean, items integer, note text, meta jsonb, updated_at timestamptz NOT NULL);
    INSERT INTO $S.src SELECT i, i % 5000, (ARRAY['paid','shipped','refunded'])[1 + i % 3], (i % 99991) / 100.0,
      timestamptz '2026-01-01' + i * interval '1 second', i % 7 = 0, 1 + i % 5, 'order ' || i || ' — ü',
      jsonb_build_object('src', 'web', 'n', i % 10), timestamptz '2026-01-01' + i * interval '1 second'
    FROM generate_series(1, $1) i;
    CREATE TABLE $S.dst (LIKE $S.src INCLUDING ALL);"
  $PSQL -c "VACUUM ANALYZE $S.src"
}
make_src "$N"
cat > "$W/ferry.yml" <<YML
pipelines:
  bench:
    tap: { name: postgres, config: { host: $HOST, user: $USER_, dbname: $DB, schemas: [$S] }, catalog: catalogs/bench.json }
    target: { name: postgres, config: { host: $HOST, user: $USER_, dbname: $DB, default_target_schema: ${S}_out, state_table: _ferry_state } }
YML
F="$FERRY -q --project $W/ferry.yml"
$F discover bench
$F select bench "$S-src"
echo '{"host": "'"$HOST"'", "user": "'"$USER_"'", "dbname": "'"$DB"'", "schemas": ["'"$S"'"]}' > "$W/tap.json"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); N=$N rows; PostgreSQL $($PSQL -Atc 'SHOW server_version')"

hyperfine --warmup 1 --runs 3 --export-markdown "$W/extract.md" \
  -n "psql COPY src TO STDOUT > /dev/null (floor)" "$PSQL -c 'COPY $S.src TO STDOUT' > /dev/null" \
  -n "ferry tap postgres > /dev/null" "$FERRY -q tap postgres --config $W/tap.json --catalog $W/catalogs/bench.json > /dev/null"
hyperfine --warmup 1 --runs 3 --export-markdown "$W/load.md" \
  -n "psql COPY TO STDOUT | psql COPY FROM STDIN (floor)" --prepare "$PSQL -c 'TRUNCATE $S.dst'" \
  "$PSQL -c 'COPY $S.src TO STDOUT' | $PSQL -c 'COPY $S.dst FROM STDIN'" \
  -n "ferry sync (Postgres to an empty Postgres table)" --prepare "$PSQL -c 'DROP SCHEMA IF EXISTS ${S}_out CASCADE'; rm -rf $W/state" \
  "$F sync bench"
cat "$W/extract.md" "$W/load.md"

echo; echo "incremental: 1% of rows change, INCREMENTAL by updated_at picks them up"
$F select bench "$S-src" --method INCREMENTAL --key updated_at
$PSQL -c "DROP SCHEMA IF EXISTS ${S}_out CASCADE"; rm -rf "$W/state"
$F sync bench
$PSQL -c "UPDATE $S.src SET status = 'changed', updated_at = now() WHERE id % 100 = 0"
/usr/bin/time -f "  %e s wall, %M KB max RSS" $F sync bench
$PSQL -At -c "SELECT '  check: ' || count(*) FILTER (WHERE status = 'changed') || ' changed of ' || count(*) FROM ${S}_out.src"

echo; echo "peak memory (max RSS) of ferry sync, FULL_TABLE into an empty table:"
$F select bench "$S-src" --method FULL_TABLE
for rows in "$N" "$((N * 10))"; do
  [ "$rows" != "$N" ] && make_src "$rows"
  $PSQL -c "DROP SCHEMA IF EXISTS ${S}_out CASCADE"; rm -rf "$W/state"
  /usr/bin/time -f "%M" -o "$W/rss" $F sync bench
  echo "  $rows rows: $(cat "$W/rss") KB ($($PSQL -Atc "SELECT count(*) FROM ${S}_out.src") loaded)"
done
$PSQL -c "DROP SCHEMA IF EXISTS $S CASCADE; DROP SCHEMA IF EXISTS ${S}_out CASCADE"
