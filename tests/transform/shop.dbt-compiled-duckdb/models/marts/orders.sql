with  __dbt__cte__int_order_payments as (


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
), payments as (

    select * from __dbt__cte__int_order_payments

),

orders as (

    select * from "shop"."main"."stg_orders"

)

select
    orders.order_id,
    orders.customer_id,
    orders.order_date,
    orders.status,
    orders.is_open,
    coalesce(payments.payment_count, 0) as payment_count,
    cast(cast((coalesce(payments.card_cents, 0)) as decimal(18, 2)) * 0.01 as decimal(12, 2)) as card_amount,
    cast(cast((coalesce(payments.bank_transfer_cents, 0)) as decimal(18, 2)) * 0.01 as decimal(12, 2)) as bank_transfer_amount,
    cast(cast((coalesce(payments.voucher_cents, 0) + coalesce(payments.gift_card_cents, 0)) as decimal(18, 2)) * 0.01 as decimal(12, 2)) as voucher_amount,
    cast(cast((coalesce(payments.amount_cents, 0)) as decimal(18, 2)) * 0.01 as decimal(12, 2)) as amount
from orders
left join payments
    on payments.order_id = orders.order_id