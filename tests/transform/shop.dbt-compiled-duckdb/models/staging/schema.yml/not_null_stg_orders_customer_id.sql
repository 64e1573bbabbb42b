
    
    



select customer_id
from "shop"."main"."stg_orders"
where customer_id is null


