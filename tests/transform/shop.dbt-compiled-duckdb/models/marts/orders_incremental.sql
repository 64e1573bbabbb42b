

-- Orders that are still open can change status, so a later run takes them again;
-- the unique_key makes that a delete+insert, not a duplicate.
select
    order_id,
    customer_id,
    order_date,
    status,
    amount
from "shop"."main_marts"."orders"
