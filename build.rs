//! Build script: lets a binary linked against a prebuilt libduckdb.so (built without the
//! `bundled` feature, DUCKDB_LIB_DIR set) find it at run time without LD_LIBRARY_PATH.

fn main() {
    println!("cargo:rerun-if-env-changed=DUCKDB_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_BUNDLED").is_none() {
        if let Ok(dir) = std::env::var("DUCKDB_LIB_DIR") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{dir}");
        }
    }
}
