#!/usr/bin/env bash
# `ferry transform parse|compile` beside dbt-core's `dbt parse|compile` on the same generated
# project, in the same run: N models (default 2,000) in 20 folders with T generic tests (default
# 5,000), made by bench/transform/gen_project.py (DuckDB profile). Reports the mean times, the
# ratio dbt/ferry, the peak memory of each, and checks that both wrote the same nodes
# (unique_ids in manifest.json) and the same compiled SQL.
#
#   bench/transform.sh                          # builds ferry (release), N=2000, T=5000
#   FERRY=path/to/ferry bench/transform.sh      # use that binary, no build
#   N=500 TESTS=1250 DBT_RUNS=2 bench/transform.sh   # quicker
#
# At N=2000 dbt takes about 40 s to parse and 2 minutes to compile on 2 cores, so the whole run
# (a checked run of each command, then WARMUP=1 + DBT_RUNS=3 timed runs) takes 15-20 minutes.
#
# dbt-core runs from a venv ($DBT_VENV, default ~/.cache/ferry/venv-dbt), created with the pinned
# versions below when it has no `dbt`. Both tools run with the project folder as the working
# directory (dbt-duckdb resolves the profile's relative `path` against it, ferry against the
# project folder); dbt writes into target-dbt/, ferry into target/.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
TESTS=${TESTS:-5000}
WARMUP=${WARMUP:-1}
DBT_RUNS=${DBT_RUNS:-3}
FERRY_RUNS=${FERRY_RUNS:-10}
if [ -z "${FERRY:-}" ]; then
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
  # shellcheck source=../.ci/libduckdb.sh
  . .ci/libduckdb.sh
  # shellcheck disable=SC2086
  cargo build --release --quiet $FERRY_CARGO_FEATURES
  FERRY="$CARGO_TARGET_DIR/release/ferry"
fi
FERRY=$(realpath "$FERRY")
VENV=${DBT_VENV:-${FERRY_CACHE:-$HOME/.cache/ferry}/venv-dbt}
if [ ! -x "$VENV/bin/dbt" ]; then
  echo "dbt: installing dbt-core into $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet 'dbt-core==1.11.16' 'dbt-duckdb==1.11.1' 'dbt-postgres==1.11.0' 'duckdb==2.0.1'
fi
DBT="$VENV/bin/dbt"
export DBT_SEND_ANONYMOUS_USAGE_STATS=false
if ! command -v /usr/bin/time >/dev/null; then
  apt-get install -y -qq time >/dev/null || sudo apt-get install -y -qq time >/dev/null
fi

W="$PWD/bench/work-transform"
python3 bench/transform/gen_project.py "$W" --models "$N" --tests "$TESTS"
cd "$W"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB; $(date -u +%F)"
echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'); dbt-core $("$VENV/bin/python" -c 'from importlib.metadata import version as v; print(v("dbt-core"), "+ dbt-duckdb", v("dbt-duckdb"), "(duckdb", v("duckdb") + ")")'); $("$FERRY" --version) ($FERRY)"

# dbt's and ferry's files on the same DuckDB path: the venv's duckdb may write a storage
# version ferry's DuckDB cannot open (and the other way round), so each compile starts without it.
NODB="rm -f bench.duckdb bench.duckdb.wal"
DBT_PARSE="$DBT parse --no-partial-parse --profiles-dir . --target-path target-dbt"
DBT_COMPILE="$DBT compile --no-partial-parse --profiles-dir . --target-path target-dbt"
FERRY_PARSE="$FERRY transform parse -q"
FERRY_COMPILE="$FERRY transform compile -q"

# One checked run of each first, its output kept, so a failure shows its message.
check() { # check NAME CMD...
  local name=$1; shift
  if ! "$@" > "log.$name" 2>&1; then
    echo "FAILED: $* (log: $W/log.$name)"; tail -30 "log.$name"; exit 1
  fi
}
compare() { # compare WHAT: the manifests' node ids and the compiled SQL of both tools
  python3 - "$1" <<'PY'
import json, os, sys
what = sys.argv[1]
d, f = json.load(open("target-dbt/manifest.json")), json.load(open("target/manifest.json"))
def ids(m):
    return set(m["nodes"]) | set(m["sources"])
def count(s, kind):
    return sum(1 for u in s if u.startswith(kind + "."))
a, b = ids(d), ids(f)
print(f"  {what}: dbt {count(a, 'model')} models, {count(a, 'test')} tests, {count(a, 'source')} sources;"
      f" ferry {count(b, 'model')} models, {count(b, 'test')} tests, {count(b, 'source')} sources;"
      f" same unique_ids: {'yes' if a == b else 'NO'}")
for label, s in (("only dbt", a - b), ("only ferry", b - a)):
    if s:
        print(f"    {label} ({len(s)}): {sorted(s)[:10]}")
if what == "compile":
    def files(root):
        out = {}
        for dirpath, _, names in os.walk(root):
            for n in names:
                p = os.path.join(dirpath, n)
                out[os.path.relpath(p, root)] = open(p).read()
        return out
    x, y = files("target-dbt/compiled"), files("target/compiled")
    same = sum(1 for k in x if y.get(k) == x[k])
    ws = sum(1 for k in x if k in y and y[k] != x[k] and y[k].split() == x[k].split())
    print(f"  compiled SQL: dbt {len(x)} files, ferry {len(y)}; identical {same},"
          f" equal but for whitespace {ws}, different {len(set(x) & set(y)) - same - ws},"
          f" only dbt {len(set(x) - set(y))}, only ferry {len(set(y) - set(x))}")
    for k in sorted(k for k in x if k in y and x[k].split() != y[k].split())[:3]:
        print(f"    differs: {k}")
sys.exit(0 if a == b else 1)
PY
}
rm -rf target target-dbt
# shellcheck disable=SC2086 # the commands are word-split on purpose
check dbt-parse $DBT_PARSE
check ferry-parse $FERRY_PARSE
compare parse || echo "  MISMATCH: the two manifests differ (above)"
$NODB; check dbt-compile $DBT_COMPILE
$NODB; check ferry-compile $FERRY_COMPILE
compare compile || echo "  MISMATCH: the two manifests differ (above)"

# Timings (each run starts without the DuckDB file, see above). Every command runs under /usr/bin/time, which appends its max RSS (KB) per run.
rm -f rss.*
t() { echo "/usr/bin/time -f %M -a -o rss.$1"; }
hyperfine --warmup "$WARMUP" --runs "$DBT_RUNS" --prepare "$NODB" --export-json dbt.json \
  -n "dbt parse --no-partial-parse" "$(t dbt-parse) $DBT_PARSE" \
  -n "dbt compile --no-partial-parse" "$(t dbt-compile) $DBT_COMPILE"
hyperfine --warmup "$WARMUP" --runs "$FERRY_RUNS" --prepare "$NODB" --export-json ferry.json \
  -n "ferry transform parse" "$(t ferry-parse) $FERRY_PARSE" \
  -n "ferry transform compile" "$(t ferry-compile) $FERRY_COMPILE"

python3 - "$N" "$TESTS" <<'PY'
import json, sys
n, t = sys.argv[1:]
d = {x["command"]: x for x in json.load(open("dbt.json"))["results"]}
f = {x["command"]: x for x in json.load(open("ferry.json"))["results"]}
def rss(name):
    return max(int(l) for l in open(f"rss.{name}") if l.strip().isdigit()) / 1024
print(f"\n{n} models, {t} tests: mean ± σ over the runs; peak RSS is the max over the runs")
print(f"| command | mean | ratio dbt/ferry | peak RSS |")
print(f"| --- | ---: | ---: | ---: |")
for step in ("parse", "compile"):
    a, b = d[f"dbt {step} --no-partial-parse"], f[f"ferry transform {step}"]
    print(f"| `dbt {step} --no-partial-parse` | {a['mean']:.2f} s ± {a['stddev'] or 0:.2f} | 1 | {rss('dbt-' + step):.0f} MB |")
    print(f"| `ferry transform {step}` | {b['mean']:.3f} s ± {b['stddev'] or 0:.3f} | **{a['mean'] / b['mean']:.1f}x** | {rss('ferry-' + step):.0f} MB |")
PY
