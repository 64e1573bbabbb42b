#!/usr/bin/env bash
# DuckDB and Parquet targets, each beside DuckDB's own loading of the same rows from a CSV file
# (the `duckdb` Python package, same DuckDB version as ferry's), measured in the same run:
#   1. into DuckDB: `COPY t FROM 'rows.csv'` into a typed table (floor), vs
#      `ferry target duckdb` reading the rows as a Singer stream, and
#      `ferry sync` of the CSV file (tap csv → target duckdb, one process);
#   2. into Parquet: `COPY (FROM read_csv('rows.csv', columns=…)) TO 'x.parquet'` (zstd) (floor),
#      vs `ferry target parquet` and `ferry sync` (tap csv → target parquet);
#   3. rows/s and peak memory (max RSS) of each ferry command at N and 10N rows (flat).
#
#   bench/warehouse.sh         # N=1000000 rows of 10 columns, RUNS=5 timed runs each; needs hyperfine and ./test.sh's
#                              # readers venv (or PY=/path/to/python with duckdb installed)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-1000000}
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
# shellcheck source=../.ci/libduckdb.sh
. .ci/libduckdb.sh
# shellcheck disable=SC2086
cargo build --release --quiet $FERRY_CARGO_FEATURES
FERRY="$CARGO_TARGET_DIR/release/ferry"
PY=${PY:-${FERRY_CACHE:-$HOME/.cache/ferry}/venv-readers/bin/python}
W="$PWD/bench/work-wh"; rm -rf "$W"; mkdir -p "$W"

COLS="id BIGINT, customer_id BIGINT, status VARCHAR, total DECIMAL(12,2), placed_at TIMESTAMPTZ, is_gift BOOLEAN, items BIGINT, score DOUBLE, day DATE, note VARCHAR"
gen() { # gen ROWS: rows.csv and the same rows as a Singer stream, rows.singer
  "$PY" - "$1" "$W" <<'PY'
import sys, json, datetime
n, w = int(sys.argv[1]), sys.argv[2]
schema = {"type": "SCHEMA", "stream": "rows", "key_properties": ["id"], "schema": {"type": "object", "properties": {
  "id": {"type": "integer"}, "customer_id": {"type": "integer"}, "status": {"type": "string"},
  "total": {"type": "string", "format": "x-singer.decimal", "precision": 12, "scale": 2},
  "placed_at": {"type": "string", "format": "date-time"}, "is_gift": {"type": "boolean"},
  "items": {"type": "integer"}, "score": {"type": "number"}, "day": {"type": "string", "format": "date"},
  "note": {"type": "string"}}}}
base = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
statuses = ["paid", "shipped", "refunded"]
with open(f"{w}/rows.csv", "w") as c, open(f"{w}/rows.singer", "w") as s:
    c.write("id,customer_id,status,total,placed_at,is_gift,items,score,day,note\n")
    s.write(json.dumps(schema) + "\n")
    for i in range(n):
        at = (base + datetime.timedelta(seconds=i)).strftime("%Y-%m-%dT%H:%M:%S.000000Z")
        day = at[:10]
        total = f"{(i % 99991) // 100}.{i % 100:02d}"
        gift = "true" if i % 7 == 0 else "false"
        note = f"order {i} - u"
        c.write(f"{i},{i % 5000},{statuses[i % 3]},{total},{at},{gift},{1 + i % 5},{i % 1000 / 8},{day},{note}\n")
        s.write('{"type":"RECORD","stream":"rows","record":{"id":%d,"customer_id":%d,"status":"%s","total":"%s","placed_at":"%s","is_gift":%s,"items":%d,"score":%s,"day":"%s","note":"%s"}}\n'
                % (i, i % 5000, statuses[i % 3], total, at, gift, 1 + i % 5, repr(i % 1000 / 8), day, note))
    s.write('{"type":"STATE","value":{"done":true}}\n')
PY
}
gen "$N"

# The CSV tap is told the same types DuckDB's COPY gets.
cat > "$W/ferry.yml" <<YML
pipelines:
  duck:
    tap: { name: csv, config: { files: [{ entity: rows, path: rows.csv, keys: [id], schema: $(sed -n 1p "$W/rows.singer" | "$PY" -c 'import sys,json; print(json.dumps(json.load(sys.stdin)["schema"]))') }] } }
    target: { name: duckdb, config: { path: sync.duckdb, schema: main } }
  lake:
    tap: { name: csv, config: { files: [{ entity: rows, path: rows.csv, keys: [id], schema: $(sed -n 1p "$W/rows.singer" | "$PY" -c 'import sys,json; print(json.dumps(json.load(sys.stdin)["schema"]))') }] } }
    target: { name: parquet, config: { path: sync-lake } }
YML
cat > "$W/ref_duck.py" <<PY
import duckdb, sys
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE t ($COLS, PRIMARY KEY (id))")
con.execute("COPY t FROM '$W/rows.csv' (HEADER)")
PY
cat > "$W/ref_parquet.py" <<PY
import duckdb
duckdb.connect().execute("""COPY (FROM read_csv('$W/rows.csv', header=true, columns={
  'id':'BIGINT','customer_id':'BIGINT','status':'VARCHAR','total':'DECIMAL(12,2)','placed_at':'TIMESTAMPTZ',
  'is_gift':'BOOLEAN','items':'BIGINT','score':'DOUBLE','day':'DATE','note':'VARCHAR'}))
  TO '$W/ref.parquet' (FORMAT parquet, COMPRESSION zstd)""")
PY
echo '{"path": "'"$W"'/target.duckdb"}' > "$W/duck.json"
echo '{"path": "'"$W"'/target-lake"}' > "$W/lake.json"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F); N=$N rows x 10 columns; DuckDB $("$PY" -c 'import duckdb; print(duckdb.__version__)')"

cd "$W"
hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$W/duck.md" \
  -n "duckdb COPY t FROM rows.csv (floor)" --prepare "rm -f ref.duckdb ref.duckdb.wal" "$PY ref_duck.py ref.duckdb" \
  -n "ferry target duckdb < rows.singer" --prepare "rm -f target.duckdb target.duckdb.wal" "$FERRY -q target duckdb --config duck.json < rows.singer > /dev/null" \
  -n "ferry sync (tap csv → target duckdb)" --prepare "rm -rf sync.duckdb sync.duckdb.wal state" "$FERRY -q --project ferry.yml sync duck"
hyperfine --warmup 1 --runs "${RUNS:-5}" --export-markdown "$W/parquet.md" \
  -n "duckdb COPY (read_csv) TO x.parquet (floor)" --prepare "rm -f ref.parquet" "$PY ref_parquet.py" \
  -n "ferry target parquet < rows.singer" --prepare "rm -rf target-lake" "$FERRY -q target parquet --config lake.json < rows.singer > /dev/null" \
  -n "ferry sync (tap csv → target parquet)" --prepare "rm -rf sync-lake state" "$FERRY -q --project ferry.yml sync lake"
cat "$W/duck.md" "$W/parquet.md"
"$PY" -c "
import duckdb
print('  check: duckdb rows', duckdb.connect('target.duckdb', read_only=True).sql('select count(*), sum(total) from main.rows').fetchone(),
      'ref', duckdb.connect('ref.duckdb', read_only=True).sql('select count(*), sum(total) from t').fetchone())"

echo; echo "peak memory (max RSS, KB) of the ferry targets and the floor:"
for rows in "$N" "$((N * 10))"; do
  [ "$rows" != "$N" ] && gen "$rows"
  rm -rf target.duckdb target.duckdb.wal target-lake ref.duckdb
  /usr/bin/time -f "%M" -o rss1 "$FERRY" -q target duckdb --config duck.json < rows.singer > /dev/null
  /usr/bin/time -f "%M" -o rss2 "$FERRY" -q target parquet --config lake.json < rows.singer > /dev/null
  /usr/bin/time -f "%M" -o rss3 "$PY" ref_duck.py ref.duckdb
  echo "  $rows rows: target duckdb $(cat rss1), target parquet $(cat rss2), duckdb COPY (python) $(cat rss3)"
done
