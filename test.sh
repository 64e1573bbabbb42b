#!/usr/bin/env bash
# The test command. On a fresh machine it installs what the tests need first:
#   - the Python Singer packages the interop tests run (target-jsonl, the Meltano SDK's
#     tap-jsonl), each in its own venv because their pins conflict;
#   - the `duckdb` and `pyarrow` Python packages, as independent readers of DuckDB/Parquet output;
#   - dbt-core with dbt-duckdb and dbt-postgres, the reference `ferry transform` is checked against;
#   - a prebuilt libduckdb.so (.ci/libduckdb.sh), so the build links DuckDB instead of compiling it;
#   - a running PostgreSQL and Redis (started if they are down), for the database connectors
#     and reverse ETL.
# Build output and venvs live outside the clone (~/.cache/ferry), so repeated runs are fast.
set -euo pipefail
cd "$(dirname "$0")"

CACHE="${FERRY_CACHE:-$HOME/.cache/ferry}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$CACHE/target}"
mkdir -p "$CACHE"

# venv NAME PACKAGE...: a venv under the cache with exactly these packages; its bin/ goes on
# PATH after everything else, so its python never shadows the system's.
venv() {
  local name=$1; shift
  local dir="$CACHE/venv-$name"
  local stamp
  stamp="$dir/.installed-$(echo "$*" | sha1sum | cut -c1-12)"
  if [ ! -f "$stamp" ]; then
    echo "test.sh: installing $* into $dir" >&2
    rm -rf "$dir"
    python3 -m venv "$dir"
    "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
    touch "$stamp"
  fi
  PATH="$PATH:$dir/bin"
}
venv target-jsonl target-jsonl==0.1.4
venv tap-jsonl tap-jsonl==0.3.1
venv pipelinewise-target-postgres pipelinewise-target-postgres==2.1.2
# Independent readers of what the DuckDB and Parquet targets write (same DuckDB version as ferry's).
venv readers duckdb==1.5.6 pyarrow==26.0.1 pytz==2025.2
# dbt-core itself, to hold `ferry transform` to dbt's compiled SQL and results.
venv dbt-1.11 dbt-core==1.11.16 dbt-duckdb==1.11.1 dbt-postgres==1.11.0
export PATH
export FERRY_REQUIRE_INTEROP=1

# PostgreSQL: start the cluster if it does not answer (later connectors' tests use it).
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi

# Redis (the reverse-ETL tests write to it): the client, and the server if it does not answer.
if ! command -v redis-cli >/dev/null; then
  apt-get install -y -q redis-tools >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q redis-tools; }
fi
if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  if ! command -v redis-server >/dev/null; then
    apt-get install -y -q redis-server >/dev/null 2>&1 || { apt-get update -q && apt-get install -y -q redis-server; }
  fi
  redis-server --bind 127.0.0.1 --port 6379 --save '' --daemonize yes
fi

# shellcheck source=.ci/libduckdb.sh
. .ci/libduckdb.sh
# shellcheck disable=SC2086 # FERRY_CARGO_FEATURES is a list of flags
cargo test --locked $FERRY_CARGO_FEATURES "$@"
