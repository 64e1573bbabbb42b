-- A singular test: rows returned are failures.
select order_id, order_total
from {{ ref('fct_orders') }}
where order_total < 0
