
    
    



select order_id
from "shop"."main_marts"."orders_incremental"
where order_id is null


