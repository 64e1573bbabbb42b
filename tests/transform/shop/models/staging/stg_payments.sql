-- The source table is loaded by a seed; this ref only tells the DAG to wait for it.
-- depends_on: {{ ref('raw_payments') }}

select
    id as payment_id,
    order_id,
    method as payment_method,
    amount_cents,
    {{ to_dollars('amount_cents') }} as amount
from {{ source('raw', 'raw_payments') }}
