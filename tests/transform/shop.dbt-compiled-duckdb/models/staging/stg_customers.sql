select
    id as customer_id,
    first_name,
    last_name,
    case
        when last_name is null then first_name
        else first_name || ' ' || last_name
    end as full_name,
    lower(email) as email,
    signup_date,
    coalesce(is_active, false) as is_active
from "shop"."main"."raw_customers"