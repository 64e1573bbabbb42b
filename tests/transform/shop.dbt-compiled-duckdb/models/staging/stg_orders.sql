select
    id as order_id,
    customer_id,
    order_date,
    status,
    status in ('placed', 'shipped') as is_open
from "shop"."main"."raw_orders"