
    
    



select *
from "shop"."main_marts"."customers"
where email is null


