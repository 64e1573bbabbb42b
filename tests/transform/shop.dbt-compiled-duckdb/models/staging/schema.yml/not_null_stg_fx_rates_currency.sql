
    
    



select currency
from "shop"."main"."stg_fx_rates"
where currency is null


