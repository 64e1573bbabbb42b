select
    id as order_id,
    customer_id,
    status,
    total as order_total,
    currency,
    placed_at,
    updated_at
from {{ source('shop', 'orders') }}
