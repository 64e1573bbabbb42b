# Sourced by ./test.sh, ./quickstart.sh and .ci/run: a prebuilt libduckdb.so of the version the
# `duckdb` crate wraps, so development builds link it instead of compiling DuckDB from source
# (the crate's `bundled` feature, ~30 minutes on two cores). It comes from the npm registry
# (the package DuckDB's Node.js bindings ship it in), fetched once into the cache and checked
# against a pinned SHA-256. Exports DUCKDB_LIB_DIR and FERRY_CARGO_FEATURES.
# shellcheck shell=bash
DUCKDB_VERSION=1.5.6
DUCKDB_NPM_TARBALL="https://registry.npmjs.org/@duckdb/node-bindings-linux-x64/-/node-bindings-linux-x64-${DUCKDB_VERSION}-r.1.tgz"
DUCKDB_NPM_SHA256=1b9f82478539bb9a1d1df44bd103121a12ae52142c07158dc52b97d2ec1d69ff

ferry_libduckdb() {
  local cache="${FERRY_CACHE:-$HOME/.cache/ferry}"
  local dir="$cache/libduckdb-$DUCKDB_VERSION"
  if [ "$(uname -s)-$(uname -m)" != "Linux-x86_64" ]; then
    # No prebuilt library for this platform here: build DuckDB from source (slow, once).
    export FERRY_CARGO_FEATURES="--features bundled"
    return 0
  fi
  if [ ! -f "$dir/libduckdb.so" ]; then
    echo "libduckdb: fetching DuckDB $DUCKDB_VERSION (prebuilt, from the npm registry) into $dir" >&2
    mkdir -p "$cache"
    local tmp
    tmp=$(mktemp -d "$cache/libduckdb.XXXXXX")
    curl -fsSL --retry 3 -o "$tmp/pkg.tgz" "$DUCKDB_NPM_TARBALL"
    echo "$DUCKDB_NPM_SHA256  $tmp/pkg.tgz" | sha256sum -c --quiet -
    tar -xzf "$tmp/pkg.tgz" -C "$tmp"
    rm -rf "$dir"
    mkdir -p "$dir"
    mv "$tmp/package/libduckdb.so" "$dir/libduckdb.so"
    rm -rf "$tmp"
  fi
  export DUCKDB_LIB_DIR="$dir"
  export FERRY_CARGO_FEATURES="--no-default-features"
}
ferry_libduckdb
