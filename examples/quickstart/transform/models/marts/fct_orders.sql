select
    o.order_id,
    o.customer_id,
    o.status,
    o.currency,
    o.placed_at,
    o.order_total,
    count(i.order_item_id) as item_count,
    coalesce(sum(i.line_total), 0) as items_total
from {{ ref('stg_orders') }} as o
left join {{ ref('stg_order_items') }} as i on i.order_id = o.order_id
group by all
