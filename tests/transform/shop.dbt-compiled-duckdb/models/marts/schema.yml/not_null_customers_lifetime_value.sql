
    
    



select lifetime_value
from "shop"."main_marts"."customers"
where lifetime_value is null


