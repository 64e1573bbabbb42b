#!/usr/bin/env python3
"""Generate a dbt project for bench/transform.sh: N models (default 2,000) in 20 folders, a
realistic DAG over a few source tables, and exactly T generic data tests (default 5,000).

    python3 bench/transform/gen_project.py OUT_DIR [--models 2000] [--tests 5000] [--seed 7]

Layout (the usual dbt style guide):
  models/staging/<system>/      stg_ models selecting from one source table each (views),
                                plus _<system>__sources.yml and _<system>__models.yml
  models/intermediate/<domain>/ int_ models ref()-ing 1-4 earlier staging/intermediate models
  models/marts/<domain>/        fct_/dim_ models ref()-ing 1-4 earlier intermediate/mart models
  macros/                       cents_to_dollars, safe_divide, status_bucket (a loop),
                                generate_schema_name (the common override)
  models/docs.md                doc blocks used in column descriptions

Every model has the columns id, parent_id, status, amount, updated_at, so the SQL is valid once
the source tables exist. Some models are `table` through a config() call, a few `ephemeral`
(ref()-ed by later models, so their CTEs get injected) and a few `incremental` with an
`{% if is_incremental() %}` filter on `{{ this }}`. Tests: unique and not_null on every
non-ephemeral model's id and on every source table's id, then accepted_values on status,
relationships from parent_id to the first non-ephemeral parent (`to: ref('...')`), not_null on
parent_id and updated_at, drawn at random until the total is exactly T. Most property files
use the current form (`data_tests:` with `arguments:`), a few the older one (`tests:` with the
arguments at the top level), as real projects mix them.

profiles.yml (profile `bench`, DuckDB file bench.duckdb, schema main) goes in OUT_DIR: run dbt
and ferry with OUT_DIR as the working directory, since dbt-duckdb resolves a relative path
against the working directory and ferry against the project folder.

Deterministic: the same arguments give byte-identical files.
"""
import argparse
import os
import random
import shutil

SYSTEMS = {  # source system -> its tables (the seed-like raw tables)
    "shop": ["orders", "order_items", "products"],
    "crm": ["customers", "accounts"],
    "web": ["sessions", "pageviews", "events"],
    "billing": ["invoices", "payments"],
    "support": ["tickets", "agents"],
}
INT_DOMAINS = ["orders", "customers", "products", "sessions", "finance", "support", "marketing"]
MART_DOMAINS = ["core", "finance", "marketing", "product", "sales", "support", "ops", "exec"]
NOUNS = ["daily", "weekly", "monthly", "enriched", "joined", "rollup", "pivoted", "deduped",
         "filtered", "scored", "ranked", "summary", "latest", "history", "cohort", "funnel"]
STATUSES = ["placed", "shipped", "completed", "returned", "cancelled"]


def yaml_str(s):
    return "'" + s.replace("'", "''") + "'"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out")
    ap.add_argument("--models", type=int, default=2000)
    ap.add_argument("--tests", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=7)
    a = ap.parse_args()
    rnd = random.Random(a.seed)
    n = a.models
    out = a.out
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.makedirs(out)

    def write(rel, text):
        p = os.path.join(out, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w") as f:
            f.write(text)

    write("dbt_project.yml", """name: bench
version: '1.0.0'
config-version: 2
profile: bench

model-paths: [models]
macro-paths: [macros]
test-paths: [tests]
seed-paths: [seeds]
target-path: target
clean-targets: [target]

vars:
  start_date: '2020-01-01'
  high_value_threshold: 500

models:
  bench:
    +materialized: view
    staging:
      +tags: [staging]
    intermediate:
      +tags: [intermediate]
    marts:
      +materialized: table
      +tags: [marts]
      finance:
        +schema: finance
""")
    write("profiles.yml", """bench:
  target: dev
  outputs:
    dev:
      type: duckdb
      path: bench.duckdb
      schema: main
      threads: 2
""")
    write("macros/cents_to_dollars.sql", """{% macro cents_to_dollars(column_name, scale=2) -%}
    round(cast({{ column_name }} as numeric(16, {{ scale }})) / 100, {{ scale }})
{%- endmacro %}
""")
    write("macros/safe_divide.sql", """{% macro safe_divide(numerator, denominator) -%}
    case when {{ denominator }} = 0 or {{ denominator }} is null then null
         else {{ numerator }} * 1.0 / {{ denominator }} end
{%- endmacro %}
""")
    write("macros/status_bucket.sql", """{#- One boolean column per status, and an open/closed bucket. -#}
{% macro status_bucket(column_name, statuses=['placed', 'shipped', 'completed', 'returned', 'cancelled']) -%}
    {%- for s in statuses %}
    {{ column_name }} = '{{ s }}' as is_{{ s }},
    {%- endfor %}
    case when {{ column_name }} in ('completed', 'returned', 'cancelled') then 'closed'
         else 'open' end as status_bucket
{%- endmacro %}
""")
    write("macros/generate_schema_name.sql", """{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- set default_schema = target.schema -%}
    {%- if custom_schema_name is none -%}
        {{ default_schema }}
    {%- else -%}
        {{ default_schema }}_{{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}
""")
    write("models/docs.md", """{% docs col_id %}
The primary key of this model: one row per `id`.
{% enddocs %}

{% docs col_status %}
The state of the record. One of:

| status | meaning |
|---|---|
""" + "".join(f"| {s} | the record is {s} |\n" for s in STATUSES) + """{% enddocs %}

{% docs col_updated_at %}
When the record last changed in the source system (UTC).
{% enddocs %}
""")

    # ---- the DAG ----
    # Layer sizes: ~10% staging, ~45% intermediate, the rest marts.
    n_stg = max(len(sum(SYSTEMS.values(), [])), n // 10)
    n_int = max(1, (n - n_stg) // 2)
    n_mart = max(0, n - n_stg - n_int)
    tables = [(s, t) for s in SYSTEMS for t in SYSTEMS[s]]
    models = []  # dicts: name, folder, layer, mat, refs, source, macros

    for i in range(n_stg):
        sysname, table = tables[i % len(tables)]
        k = i // len(tables)
        models.append(dict(name=f"stg_{sysname}__{table}" + (f"_v{k}" if k else ""),
                           folder=f"staging/{sysname}", layer="stg", refs=[],
                           source=(sysname, table), mat="view"))

    def pick_parents(pool):
        # Mostly recent models (a deep DAG), sometimes anything earlier (wide fan-in).
        k = min(len(pool), rnd.choice([1, 1, 2, 2, 2, 3, 3, 4]))
        chosen = []
        while len(chosen) < k:
            if rnd.random() < 0.6:
                m = pool[rnd.randrange(max(0, len(pool) - 60), len(pool))]
            else:
                m = rnd.choice(pool)
            if m not in chosen:
                chosen.append(m)
        return chosen

    def materialization(r):
        if r < 0.03:
            return "ephemeral"
        if r < 0.08:
            return "incremental"
        return None  # the folder's default

    for i in range(n_int):
        dom = INT_DOMAINS[i % len(INT_DOMAINS)]
        pool = models[:]  # staging and earlier intermediate
        refs = pick_parents(pool)
        mat = materialization(rnd.random())
        if mat is None and rnd.random() < 0.25:
            mat = "table"
        models.append(dict(name=f"int_{dom}__{rnd.choice(NOUNS)}_{i}", folder=f"intermediate/{dom}",
                           layer="int", refs=refs, source=None, mat=mat))
    int_start = n_stg
    for i in range(n_mart):
        dom = MART_DOMAINS[i % len(MART_DOMAINS)]
        pool = models[int_start:]  # intermediate and earlier marts
        refs = pick_parents(pool)
        mat = materialization(rnd.random())
        if mat is None and rnd.random() < 0.3:
            mat = "table"  # redundant with the folder's +materialized, as real projects have
        prefix = "fct" if i % 3 else "dim"
        models.append(dict(name=f"{prefix}_{dom}__{rnd.choice(NOUNS)}_{i}", folder=f"marts/{dom}",
                           layer="mart", refs=refs, source=None, mat=mat))
    by_name = {m["name"]: m for m in models}
    assert len(by_name) == len(models)

    # ---- SQL ----
    for idx, m in enumerate(models):
        lines = []
        if m["mat"] == "incremental":
            lines.append("{{ config(materialized='incremental', unique_key='id', "
                         "on_schema_change='append_new_columns') }}\n")
        elif m["mat"] in ("table", "ephemeral"):
            lines.append("{{ config(materialized='%s') }}\n" % m["mat"])
        if m["layer"] == "stg":
            sysname, table = m["source"]
            use_macro = idx % 2 == 0
            amount = ("{{ cents_to_dollars('amount_cents') }}" if use_macro
                      else "amount_cents / 100.0")
            lines.append(f"""with source as (

    select * from {{{{ source('{sysname}', '{table}') }}}}

),

renamed as (

    select
        id,
        {('customer_id' if sysname != 'crm' else 'account_id')} as parent_id,
        lower(status) as status,
        {amount} as amount,
        updated_at
    from source
    where updated_at >= '{{{{ var("start_date") }}}}'

)

select * from renamed
""")
        else:
            refs = m["refs"]
            ctes = []
            for j, r in enumerate(refs):
                ctes.append(f"{'p' + str(j)} as (\n\n    select * from {{{{ ref('{r['name']}') }}}}\n\n)")
            sel = ["p0.id", "p0.parent_id", "p0.status"]
            amount = " + ".join(f"coalesce(p{j}.amount, 0)" for j in range(len(refs)))
            sel.append(f"{amount} as amount")
            sel.append("p0.updated_at")
            joins = "".join(f"\n    left join p{j} on p{j}.id = p0.parent_id" for j in range(1, len(refs)))
            body = "with " + ",\n\n".join(ctes) + ",\n\nfinal as (\n\n    select\n        " \
                + ",\n        ".join(sel) + "\n    from p0" + joins
            if m["mat"] == "incremental":
                body += ("\n\n    {% if is_incremental() %}\n"
                         "    where p0.updated_at > (select max(updated_at) from {{ this }})\n"
                         "    {% endif %}")
            elif idx % 5 == 0:
                body += "\n    where p0.amount >= {{ var('high_value_threshold') }}"
            body += "\n\n)\n\n"
            if idx % 7 == 0:
                body += ("select\n    *,\n    {{ safe_divide('amount', 'id') }} as amount_per_id,"
                         "\n    {{ status_bucket('status') }}\nfrom final\n")
            else:
                body += "select * from final\n"
            lines.append(body)
        write(f"models/{m['folder']}/{m['name']}.sql", "".join(lines))

    # ---- tests: exactly a.tests of them ----
    # A test is (owner, column, kind, args); owner is ("model", name) or ("source", sys, table).
    base, extra = [], []
    for sysname, table in tables:
        base.append((("source", sysname, table), "id", "unique", None))
        base.append((("source", sysname, table), "id", "not_null", None))
    for m in models:
        if m["mat"] == "ephemeral":
            continue
        o = ("model", m["name"])
        base.append((o, "id", "unique", None))
        base.append((o, "id", "not_null", None))
        extra.append((o, "status", "accepted_values", STATUSES))
        extra.append((o, "parent_id", "not_null", None))
        extra.append((o, "updated_at", "not_null", None))
        parents = [p for p in m["refs"] if p["mat"] != "ephemeral"]
        if parents:
            extra.append((o, "parent_id", "relationships", parents[0]["name"]))
    if a.tests > len(base) + len(extra):
        raise SystemExit(f"at most {len(base) + len(extra)} tests for {n} models")
    if a.tests <= len(base):
        chosen = base[:a.tests]
    else:
        chosen = base + rnd.sample(extra, a.tests - len(base))
    tests = {}  # owner -> column -> [(kind, args)]
    for owner, col, kind, args in chosen:
        tests.setdefault(owner, {}).setdefault(col, []).append((kind, args))

    def test_lines(entries, indent, legacy):
        pad = " " * indent
        out_lines = [f"{pad}{'tests' if legacy else 'data_tests'}:"]
        for kind, args in entries:
            if kind in ("unique", "not_null"):
                out_lines.append(f"{pad}  - {kind}")
                continue
            out_lines.append(f"{pad}  - {kind}:")
            ap_ = pad + ("      " if not legacy else "      ")
            if not legacy:
                out_lines.append(f"{pad}      arguments:")
                ap_ = pad + "        "
            if kind == "accepted_values":
                out_lines.append(f"{ap_}values: [{', '.join(yaml_str(v) for v in args)}]")
            else:
                out_lines.append(f"{ap_}to: ref('{args}')")
                out_lines.append(f"{ap_}field: id")
        return out_lines

    col_desc = {
        "id": "\"{{ doc('col_id') }}\"",
        "parent_id": "The id of the parent record (the first upstream model's id).",
        "status": "\"{{ doc('col_status') }}\"",
        "amount": "The amount in dollars, summed over the upstream models.",
        "updated_at": "\"{{ doc('col_updated_at') }}\"",
    }

    # Sources
    for sysname, tbls in SYSTEMS.items():
        y = ["version: 2", "", "sources:", f"  - name: {sysname}",
             f"    description: Raw tables replicated from the {sysname} system.",
             "    schema: main", "    tables:"]
        for t in tbls:
            y += [f"      - name: {t}", f"        description: One row per {t[:-1] if t.endswith('s') else t} in {sysname}.",
                  "        columns:"]
            for col, entries in tests.get(("source", sysname, t), {}).items():
                y += [f"          - name: {col}", f"            description: The {t} primary key."]
                y += test_lines(entries, 12, legacy=False)
        write(f"models/staging/{sysname}/_{sysname}__sources.yml", "\n".join(y) + "\n")

    # Models: one properties file per folder
    folders = {}
    for m in models:
        folders.setdefault(m["folder"], []).append(m)
    for fi, (folder, ms) in enumerate(sorted(folders.items())):
        legacy = fi % 5 == 4  # every fifth folder uses the older `tests:` form
        y = ["version: 2", "", "models:"]
        for m in ms:
            up = ", ".join(r["name"] for r in m["refs"]) or ".".join(m["source"])
            y += [f"  - name: {m['name']}",
                  f"    description: {yaml_str(m['layer'] + ' model built from ' + up + '.')}"]
            if m["mat"] == "incremental":
                y += ["    config:", "      tags: [incremental]"]
            y.append("    columns:")
            mt = tests.get(("model", m["name"]), {})
            for col in ["id", "parent_id", "status", "amount", "updated_at"]:
                y += [f"      - name: {col}", f"        description: {col_desc[col]}"]
                if col in mt:
                    y += test_lines(mt[col], 8, legacy)
        short = folder.split("/")[-1]
        write(f"models/{folder}/_{short}__models.yml", "\n".join(y) + "\n")

    kinds = {}
    for _, _, kind, _ in chosen:
        kinds[kind] = kinds.get(kind, 0) + 1
    mats = {}
    for m in models:
        mats[m["mat"] or ("view" if m["layer"] != "mart" else "table")] = mats.get(m["mat"] or ("view" if m["layer"] != "mart" else "table"), 0) + 1
    print(f"generated {out}: {len(models)} models in {len(folders)} folders "
          f"({n_stg} staging, {n_int} intermediate, {n_mart} marts; "
          + ", ".join(f"{v} {k}" for k, v in sorted(mats.items())) + f"), {len(tables)} source tables, "
          f"{len(chosen)} tests (" + ", ".join(f"{v} {k}" for k, v in sorted(kinds.items())) + ")")


if __name__ == "__main__":
    main()
