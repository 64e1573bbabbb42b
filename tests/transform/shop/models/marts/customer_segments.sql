{{ config(tags=['marketing']) }}

{% set vip_cents = var('vip_threshold') * 100 %}

select
    customer_id,
    order_count,
    lifetime_value,
    case
        when order_count = 0 then 'prospect'
        when lifetime_value >= {{ var('vip_threshold') }} then 'vip'
        when order_count = 1 then 'one_time'
        else 'regular'
    end as segment,
    case
        when lifetime_value_cents >= {{ vip_cents }} then cast(0 as numeric(12, 2))
        else {{ to_dollars(vip_cents ~ ' - lifetime_value_cents') }}
    end as dollars_to_vip
from {{ ref('customers') }}
