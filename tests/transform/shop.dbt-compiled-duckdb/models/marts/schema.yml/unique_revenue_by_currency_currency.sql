
    
    

select
    currency as unique_field,
    count(*) as n_records

from "shop"."main_marts"."revenue_by_currency"
where currency is not null
group by currency
having count(*) > 1


