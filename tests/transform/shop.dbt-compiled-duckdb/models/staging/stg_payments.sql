-- The source table is loaded by a seed; this ref only tells the DAG to wait for it.
-- depends_on: "shop"."main"."raw_payments"

select
    id as payment_id,
    order_id,
    method as payment_method,
    amount_cents,
    cast(cast((amount_cents) as decimal(18, 2)) * 0.01 as decimal(12, 2)) as amount
from "shop"."main"."raw_payments"