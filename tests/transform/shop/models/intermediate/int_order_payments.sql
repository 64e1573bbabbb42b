{{ config(materialized='ephemeral') }}

{%- set methods = ['card', 'bank_transfer', 'voucher', 'gift_card'] %}

select
    order_id,
    count(*) as payment_count,
    sum(amount_cents) as amount_cents,
    {%- for method in methods %}
    sum(case when payment_method = '{{ method }}' then amount_cents else 0 end) as {{ method }}_cents
    {%- if not loop.last %},{% endif %}
    {%- endfor %}
from {{ ref('stg_payments') }}
group by order_id
