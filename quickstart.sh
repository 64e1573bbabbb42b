#!/usr/bin/env bash
# The main job, from a fresh clone: build ferry and run the quickstart project's pipelines
# (a shop's CSV exports and CRM export into an embedded DuckDB warehouse, its event log into a
# Parquet lake), then build the staging views and marts downstream of what was loaded
# (`--then-transform`, the dbt-style project in examples/quickstart/transform) and write the
# docs page with the lineage, and send the high-value customers to the CRM database (reverse
# ETL, only what changed). Arguments are pipeline names (default: all of them).
#
# The build links a prebuilt libduckdb.so of the DuckDB version ferry wraps, fetched once from
# the npm registry (.ci/libduckdb.sh), instead of compiling DuckDB from source (`cargo install`
# does that, with the default `bundled` feature). Build output is kept in ~/.cache/ferry.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/ferry/target}"
# shellcheck source=.ci/libduckdb.sh
. .ci/libduckdb.sh
# shellcheck disable=SC2086 # a list of flags
cargo build --release --locked --quiet $FERRY_CARGO_FEATURES
if [ $# -eq 0 ]; then set -- --all; fi
FERRY="$CARGO_TARGET_DIR/release/ferry"
"$FERRY" --project examples/quickstart/ferry.yml sync "$@" --then-transform
"$FERRY" --project examples/quickstart/ferry.yml transform docs
"$FERRY" --project examples/quickstart/ferry.yml reverse --all
