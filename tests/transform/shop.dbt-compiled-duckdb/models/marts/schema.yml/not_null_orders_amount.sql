
    
    



select amount
from "shop"."main_marts"."orders"
where amount is null


