#!/usr/bin/env bash
# Reverse-ETL change detection: a 1,000,000-row source in the warehouse (DuckDB, then Postgres),
# delivered once, then timed: a run with nothing changed (the change set alone) and a run after
# 1% of the rows changed (change set + 10,000 rows upserted into a Postgres table). Peak memory
# at 1M and 3M rows. Needs hyperfine, psql, and ./test.sh's `readers` venv (the duckdb package,
# to make the DuckDB source).
#
#   bench/reverse.sh            # N=1000000
#   N=200000 bench/reverse.sh   # quicker
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
# shellcheck source=../.ci/libduckdb.sh
. .ci/libduckdb.sh
if [ -z "${FERRY:-}" ]; then
  # shellcheck disable=SC2086
  cargo build --release --quiet $FERRY_CARGO_FEATURES
  FERRY="$CARGO_TARGET_DIR/release/ferry"
fi
PY="${PY:-$HOME/.cache/ferry/venv-readers/bin/python}"
W="$PWD/bench/work-reverse"
rm -rf "$W"; mkdir -p "$W"
PSQL=(psql -X -q -h 127.0.0.1 -U postgres -d test -v ON_ERROR_STOP=1)
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); N=$N rows"

make_duck() { # rows
  rm -f "$W/wh.duckdb"
  "$PY" - "$W/wh.duckdb" "$1" <<'PY'
import duckdb, sys
c = duckdb.connect(sys.argv[1])
c.sql(f"""create table customers as select i as id, 'c' || i || '@example.com' as email,
          'Name ' || i as name, (i * 7 % 100000) / 100.0 as ltv, i % 3 = 0 as is_vip
          from range(1, {int(sys.argv[2])} + 1) t(i)""")
PY
}
make_pg() { # rows
  "${PSQL[@]}" -c "drop schema if exists bench_rev cascade; create schema bench_rev;
    create table bench_rev.customers as select i as id, 'c' || i || '@example.com' as email,
      'Name ' || i as name, ((i * 7 % 100000) / 100.0)::numeric(12,2) as ltv, i % 3 = 0 as is_vip
      from generate_series(1, $1) i; alter table bench_rev.customers add primary key (id); analyze bench_rev.customers"
}
reset_app() {
  "${PSQL[@]}" -c "drop schema if exists bench_app cascade; create schema bench_app;
    create table bench_app.accounts (id bigint primary key, email text, name text, ltv numeric(12,2), is_vip boolean)"
}
project() { # warehouse-yaml
  cat > "$W/ferry.yml" <<EOF
warehouse: $1
syncs:
  accounts:
    source: { query: "select id, email, name, ltv, is_vip from customers" }
    primary_key: id
    mode: upsert
    snapshot_schema: bench_snap
    destination: { name: postgres, config: { host: 127.0.0.1, user: postgres, dbname: test, table: bench_app.accounts } }
EOF
}

report=()
for wh in duckdb postgres; do
  reset_app
  if [ "$wh" = duckdb ]; then
    make_duck "$N"
    project "{ name: duckdb, config: { path: wh.duckdb } }"
    change="$PY -c \"import duckdb,random; c=duckdb.connect('$W/wh.duckdb'); c.sql('update customers set ltv = ltv + 0.01 where id % 100 = ' + str(random.randrange(100)))\""
  else
    make_pg "$N"
    project "{ name: postgres, config: { host: 127.0.0.1, user: postgres, dbname: test } }"
    sed -i 's/from customers/from bench_rev.customers/' "$W/ferry.yml"
    change="${PSQL[*]} -c \"update bench_rev.customers set ltv = ltv + 0.01 where id % 100 = (random() * 99)::int\""
    "${PSQL[@]}" -c "drop schema if exists bench_snap cascade"
  fi
  start=$(date +%s%N)
  (cd "$W" && "$FERRY" -q reverse accounts)
  first_ms=$(( ($(date +%s%N) - start) / 1000000 ))
  report+=("$wh: first delivery of $N rows (all sent): ${first_ms} ms")
  hyperfine --warmup 1 --runs 5 --export-json "$W/$wh.json" \
    -n "$wh: nothing changed (change detection only)" "cd $W && $FERRY -q reverse accounts" \
    -n "$wh: 1% changed (detect + upsert ~$((N / 100)) rows)" --prepare "$change" "cd $W && $FERRY -q reverse accounts"
  rss=$(cd "$W" && /usr/bin/time -f %M "$FERRY" -q reverse accounts 2>&1 >/dev/null | tail -1)
  report+=("$wh: peak RSS of a no-change run at N=$N: ${rss} KB")
  if [ "$wh" = postgres ]; then "${PSQL[@]}" -c "drop schema if exists bench_snap cascade"; fi
done
# Memory as the source grows: the change set stays in the warehouse, pages travel.
make_duck $((N * 3)); reset_app; project "{ name: duckdb, config: { path: wh.duckdb } }"
rss3=$(cd "$W" && /usr/bin/time -f %M "$FERRY" -q reverse accounts 2>&1 >/dev/null | tail -1)
report+=("duckdb: peak RSS of the first delivery at N=$((N * 3)) (all rows sent): ${rss3} KB")
printf '%s\n' "${report[@]}"
"${PSQL[@]}" -c "drop schema if exists bench_rev cascade; drop schema if exists bench_app cascade; drop schema if exists bench_snap cascade"
