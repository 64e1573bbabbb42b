
    
    



select id
from "shop"."main"."raw_payments"
where id is null


