{#- Money arrives as integer cents. Both variants give numeric(12,2), so the two
    adapters print the same digits: Postgres divides numerics exactly, while DuckDB
    would turn `/ 100.0` into a double, hence its own variant. -#}

{% macro to_dollars(col) -%}
    {{ return(adapter.dispatch('to_dollars')(col)) }}
{%- endmacro %}

{% macro default__to_dollars(col) -%}
    cast(round(({{ col }}) / 100.0, 2) as numeric(12, 2))
{%- endmacro %}

{% macro duckdb__to_dollars(col) -%}
    cast(cast(({{ col }}) as decimal(18, 2)) * 0.01 as decimal(12, 2))
{%- endmacro %}
