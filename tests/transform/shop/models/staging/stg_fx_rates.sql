{{ config(tags=['finance']) }}

select
    currency,
    cast(rate as numeric(10, 4)) as rate,
    valid_on
from {{ ref('raw_fx_rates') }}
