select
    id as lead_id,
    lower(email) as email,
    name as lead_name,
    score,
    custom_fields.industry as industry,
    custom_fields.employees as employees
from {{ source('crm', 'leads') }}
