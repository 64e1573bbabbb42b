select
    product_id,
    product_name,
    sum(quantity) as units_sold,
    sum(line_total) as revenue
from {{ ref('stg_order_items') }}
group by product_id, product_name
