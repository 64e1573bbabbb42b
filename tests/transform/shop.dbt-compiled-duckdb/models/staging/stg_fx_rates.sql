

select
    currency,
    cast(rate as numeric(10, 4)) as rate,
    valid_on
from "shop"."main"."raw_fx_rates"