



select
    customer_id,
    order_count,
    lifetime_value,
    case
        when order_count = 0 then 'prospect'
        when lifetime_value >= 500 then 'vip'
        when order_count = 1 then 'one_time'
        else 'regular'
    end as segment,
    case
        when lifetime_value_cents >= 50000 then cast(0 as numeric(12, 2))
        else cast(cast((50000 - lifetime_value_cents) as decimal(18, 2)) * 0.01 as decimal(12, 2))
    end as dollars_to_vip
from "shop"."main_marts"."customers"