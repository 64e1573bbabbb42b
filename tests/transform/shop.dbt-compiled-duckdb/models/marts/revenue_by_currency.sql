with latest_rates as (

    select r.currency, r.rate, r.valid_on
    from "shop"."main"."stg_fx_rates" as r
    where r.valid_on = (
        select max(r2.valid_on)
        from "shop"."main"."stg_fx_rates" as r2
        where r2.currency = r.currency
    )

),

revenue as (

    select sum(amount) as revenue_usd
    from "shop"."main_marts"."orders"
    where status not in ('cancelled', 'returned')

)

select
    latest_rates.currency,
    latest_rates.valid_on as rate_date,
    latest_rates.rate,
    revenue.revenue_usd,
    cast(round(revenue.revenue_usd * latest_rates.rate, 2) as numeric(14, 2)) as revenue_local
from latest_rates
cross join revenue