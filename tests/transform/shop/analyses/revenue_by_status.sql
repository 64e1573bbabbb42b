-- An analysis: compiled by `compile` for someone to run by hand, never built.
select status, count(*) as orders, sum(amount) as revenue
from {{ ref('orders') }}
group by status
