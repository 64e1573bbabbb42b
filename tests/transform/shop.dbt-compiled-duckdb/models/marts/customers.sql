with __dbt__cte__int_order_payments as (


select
    order_id,
    count(*) as payment_count,
    sum(amount_cents) as amount_cents,
    sum(case when payment_method = 'card' then amount_cents else 0 end) as card_cents,
    sum(case when payment_method = 'bank_transfer' then amount_cents else 0 end) as bank_transfer_cents,
    sum(case when payment_method = 'voucher' then amount_cents else 0 end) as voucher_cents,
    sum(case when payment_method = 'gift_card' then amount_cents else 0 end) as gift_card_cents
from "shop"."main"."stg_payments"
group by order_id
) -- One row per customer. Cancelled orders do not count.
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
    cast(cast((coalesce(o.lifetime_value_cents, 0)) as decimal(18, 2)) * 0.01 as decimal(12, 2)) as lifetime_value
from "shop"."main"."stg_customers" as c
left join (
    select
        ord.customer_id,
        min(ord.order_date) as first_order_date,
        max(ord.order_date) as last_order_date,
        count(*) as order_count,
        sum(coalesce(pay.amount_cents, 0)) as lifetime_value_cents
    from "shop"."main"."stg_orders" as ord
    left join __dbt__cte__int_order_payments as pay
        on pay.order_id = ord.order_id
    where ord.status <> 'cancelled'
    group by ord.customer_id
) as o
    on o.customer_id = c.customer_id