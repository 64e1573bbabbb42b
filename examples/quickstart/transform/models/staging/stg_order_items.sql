select
    i.id as order_item_id,
    i.order_id,
    i.product_id,
    p.name as product_name,
    i.quantity,
    i.unit_price,
    i.quantity * i.unit_price as line_total
from {{ source('shop', 'order_items') }} as i
left join {{ source('shop', 'products') }} as p on p.id = i.product_id
