-- What each payment method cost, from the seed's decimal fee rates.
select
    payment_method,
    count(*) as payments,
    sum(fee_cents) as fee_cents,
    cast(sum(raw_fee_cents) / 100 as numeric(18, 4)) as raw_fee_dollars,
    cast(sum(fee_cents) / sum(amount_cents) as numeric(18, 6)) as effective_rate
from {{ ref('int_payment_fees') }}
group by payment_method
