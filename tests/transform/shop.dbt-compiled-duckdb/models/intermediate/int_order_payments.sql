

select
    order_id,
    count(*) as payment_count,
    sum(amount_cents) as amount_cents,
    sum(case when payment_method = 'card' then amount_cents else 0 end) as card_cents,
    sum(case when payment_method = 'bank_transfer' then amount_cents else 0 end) as bank_transfer_cents,
    sum(case when payment_method = 'voucher' then amount_cents else 0 end) as voucher_cents,
    sum(case when payment_method = 'gift_card' then amount_cents else 0 end) as gift_card_cents
from "shop"."main"."stg_payments"
group by order_id