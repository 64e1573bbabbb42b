//! Black-box tests of the `ferry` binary: one test binary, one module per area.

// Helpers: a temp project folder and a runner for the real binary.
mod util;

// Singer tap/target commands in pipes, --about, --discover, inference.
mod pipe;
// `ferry sync` pipelines: state, increments, --select, --full-refresh, locks, reports.
mod sync;
// Every kind of bad input: exact messages, exit codes, nothing committed.
mod bad_input;
// Killing a run at random points: no loss, no duplicates after the re-run.
mod kill;
// External Singer executables as tap or target, and Python Singer packages from PyPI.
mod interop;
// The Postgres target against the real server: types, upserts, evolution, versions, kills.
mod postgres;
// The Postgres tap against the real server: types, methods, resume, PG to PG.
mod postgres_tap;
// Random bytes and random messages never make the parser or validator panic.
mod fuzz;
// Postgres, DuckDB and Parquet held to the same cases; DuckDB and Parquet read back by
// independent readers.
mod warehouse;
// REST API taps (taps/*.yml) against a local server imitating the real APIs, with faults.
mod rest;
// `ferry transform`: dbt-style projects in DuckDB and Postgres, bad projects, selection.
mod transform;
// `ferry transform` against dbt itself: compiled SQL snapshots, and dbt-core from PyPI.
mod transform_dbt;
// `ferry reverse` into Redis and a Postgres application database, from a Postgres warehouse.
mod reverse;
