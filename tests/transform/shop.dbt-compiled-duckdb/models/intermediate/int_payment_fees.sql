-- A view over a view (stg_payments), read by a table: rebuilding stg_payments drops this view
-- through the cascade of its backup, which the next model must know.
select
    p.payment_id,
    p.order_id,
    p.payment_method,
    p.amount_cents,
    p.amount_cents * f.fee_rate as raw_fee_cents,
    round(p.amount_cents * f.fee_rate) + f.fixed_fee_cents as fee_cents
from "shop"."main"."stg_payments" as p
join "shop"."main"."raw_payment_fees" as f on f.method = p.payment_method