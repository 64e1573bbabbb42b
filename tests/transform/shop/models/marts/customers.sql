-- One row per customer. Cancelled orders do not count.
select
    c.customer_id,
    c.full_name,
    c.email,
    c.signup_date,
    c.is_active,
    o.first_order_date,
    o.last_order_date,
    o.last_order_date - o.first_order_date as days_between_first_and_last,
    coalesce(o.order_count, 0) as order_count,
    coalesce(o.lifetime_value_cents, 0) as lifetime_value_cents,
    {{ to_dollars('coalesce(o.lifetime_value_cents, 0)') }} as lifetime_value
from {{ ref('stg_customers') }} as c
left join (
    select
        ord.customer_id,
        min(ord.order_date) as first_order_date,
        max(ord.order_date) as last_order_date,
        count(*) as order_count,
        sum(coalesce(pay.amount_cents, 0)) as lifetime_value_cents
    from {{ ref('stg_orders') }} as ord
    left join {{ ref('int_order_payments') }} as pay
        on pay.order_id = ord.order_id
    where ord.status <> 'cancelled'
    group by ord.customer_id
) as o
    on o.customer_id = c.customer_id
