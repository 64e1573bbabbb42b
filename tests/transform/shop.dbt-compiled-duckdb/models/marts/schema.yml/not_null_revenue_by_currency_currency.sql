
    
    



select currency
from "shop"."main_marts"."revenue_by_currency"
where currency is null


