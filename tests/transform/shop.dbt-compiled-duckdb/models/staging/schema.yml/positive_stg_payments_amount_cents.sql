

select amount_cents
from "shop"."main"."stg_payments"
where amount_cents <= 0

