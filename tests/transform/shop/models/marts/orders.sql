with payments as (

    select * from {{ ref('int_order_payments') }}

),

orders as (

    select * from {{ ref('stg_orders') }}

)

select
    orders.order_id,
    orders.customer_id,
    orders.order_date,
    orders.status,
    orders.is_open,
    coalesce(payments.payment_count, 0) as payment_count,
    {{ to_dollars('coalesce(payments.card_cents, 0)') }} as card_amount,
    {{ to_dollars('coalesce(payments.bank_transfer_cents, 0)') }} as bank_transfer_amount,
    {{ to_dollars('coalesce(payments.voucher_cents, 0) + coalesce(payments.gift_card_cents, 0)') }} as voucher_amount,
    {{ to_dollars('coalesce(payments.amount_cents, 0)') }} as amount
from orders
left join payments
    on payments.order_id = orders.order_id
