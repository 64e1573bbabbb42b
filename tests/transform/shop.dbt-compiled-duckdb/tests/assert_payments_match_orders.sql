-- Every paid cent must land on its order: the mart's amount equals the payments' sum.
select
    o.order_id,
    o.amount,
    p.paid_cents
from "shop"."main_marts"."orders" as o
join (
    select order_id, sum(amount_cents) as paid_cents
    from "shop"."main"."stg_payments"
    group by order_id
) as p
    on p.order_id = o.order_id
where o.amount * 100 <> p.paid_cents