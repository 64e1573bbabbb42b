"""Independent reader for the tests: what ferry wrote, read back with DuckDB's and Arrow's own
Python packages (installed by ./test.sh), printed as JSON lines with exact values.

  read_rows.py duckdb FILE SQL            rows of a query, as JSON arrays
  read_rows.py duckdb-types FILE SCHEMA TABLE   column name and type per line
  read_rows.py parquet BASE DIR           rows of the manifest's files under DIR, in manifest order
  read_rows.py parquet-schema BASE DIR    Arrow schema of each of those files
  read_rows.py parquet-meta BASE DIR      compression codec of each of those files
"""
import datetime
import decimal
import json
import math
import os
import sys


def plain(v):
    if isinstance(v, float) and not math.isfinite(v):
        # JSON has no literal for these: their names, as ferry sends them.
        return "NaN" if math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
    if isinstance(v, decimal.Decimal):
        return str(v)
    if isinstance(v, datetime.datetime):
        if v.tzinfo is not None:
            v = v.astimezone(datetime.timezone.utc)
        return v.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    if isinstance(v, (datetime.date, datetime.time)):
        return v.isoformat()
    if isinstance(v, dict):
        return {k: plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    return v


def manifest_files(base, sub):
    with open(os.path.join(base, "_ferry_manifest.json")) as f:
        m = json.load(f)
    return [os.path.join(base, e["path"]) for e in m["files"] if e["path"].split("/")[0] == sub]


def main():
    mode = sys.argv[1]
    out = sys.stdout
    if mode.startswith("duckdb"):
        import duckdb

        con = duckdb.connect(sys.argv[2], read_only=True)
        if mode == "duckdb":
            for row in con.execute(sys.argv[3]).fetchall():
                out.write(json.dumps(plain(list(row)), ensure_ascii=False) + "\n")
        else:
            rows = con.execute(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
                [sys.argv[3], sys.argv[4]],
            ).fetchall()
            for name, ty in rows:
                out.write(f"{name}:{ty}\n")
        return
    import pyarrow.parquet as pq

    for path in manifest_files(sys.argv[2], sys.argv[3]):
        if mode == "parquet":
            for row in pq.read_table(path).to_pylist():
                out.write(json.dumps(plain(row), ensure_ascii=False) + "\n")
        elif mode == "parquet-schema":
            schema = pq.read_schema(path)
            out.write(json.dumps({f.name: str(f.type) for f in schema}) + "\n")
        elif mode == "parquet-meta":
            md = pq.ParquetFile(path).metadata
            out.write(md.row_group(0).column(0).compression + "\n")


if __name__ == "__main__":
    main()
