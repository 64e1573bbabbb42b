{{ config(materialized='table') }}

with orders as (
    select
        customer_id,
        count(*) as order_count,
        sum(order_total) as lifetime_value,
        min(placed_at) as first_order_at,
        max(placed_at) as last_order_at
    from {{ ref('stg_orders') }}
    where status not in ('cancelled', 'refunded')
    group by customer_id
)

select
    c.customer_id,
    c.customer_name,
    c.email,
    c.country,
    coalesce(o.order_count, 0) as order_count,
    coalesce(o.lifetime_value, 0) as lifetime_value,
    o.first_order_at,
    o.last_order_at,
    coalesce(o.lifetime_value, 0) >= {{ var('high_value_threshold') }} as is_high_value
from {{ ref('stg_customers') }} as c
left join orders as o on o.customer_id = c.customer_id
