{{
    config(
        materialized='incremental',
        unique_key='order_id'
    )
}}

-- Orders that are still open can change status, so a later run takes them again;
-- the unique_key makes that a delete+insert, not a duplicate.
select
    order_id,
    customer_id,
    order_date,
    status,
    amount
from {{ ref('orders') }}
{% if is_incremental() %}
where order_id > (select max(order_id) from {{ this }})
   or is_open
{% endif %}
