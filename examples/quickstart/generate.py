#!/usr/bin/env python3
"""Generates the quickstart's bundled data: a small company's product database export
(customers, products, orders, order items), a CRM export (leads with nested custom fields) and
an event log. Deterministic (fixed seed): re-running gives the same files.

    python3 examples/quickstart/generate.py
"""
import csv
import json
import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

HERE = Path(__file__).parent
rng = random.Random(20261122)
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)

FIRST = ["Ann", "Bob", "Chloé", "Dmitri", "Eun-ji", "Fatima", "Grzegorz", "Hiroshi", "Inès", "José",
         "Kwame", "Léa", "Mårten", "Nguyễn", "Olga", "Priya", "Quentin", "Rūta", "Søren", "Zoë"]
LAST = ["Smith", "Müller", "O'Brien", "García", "Ødegaard", "Kowalski", "Tanaka", "Dubois", "Rossi", "Nakamura"]
PRODUCTS = ["Espresso beans", "Pour-over kettle", "Ceramic mug", "Grinder", "Filter papers (100)",
            "Cold brew jar", "Milk frother", "Scale, 0.1 g", "Travel tumbler", "Tea sampler"]


def ts(dt):
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def write_csv(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def day(n_customers, n_orders, start_id, start_order, when, folder, suffix):
    customers = []
    for i in range(start_id, start_id + n_customers):
        created = when + timedelta(minutes=rng.randrange(0, 24 * 60))
        email = None if rng.random() < 0.05 else f"customer{i}@example.com"
        customers.append([i, f"{rng.choice(FIRST)} {rng.choice(LAST)}", email or "",
                          rng.choice(["DE", "FR", "US", "JP", "NO", "PL", "BR", ""]), ts(created), ts(created)])
    write_csv(HERE / folder / f"customers{suffix}.csv",
              ["id", "name", "email", "country", "created_at", "updated_at"], customers)

    orders, items = [], []
    item_id = start_order * 3
    for o in range(start_order, start_order + n_orders):
        placed = when + timedelta(seconds=rng.randrange(0, 24 * 3600))
        cust = rng.randrange(1, start_id + n_customers)
        total = Decimal(0)
        for _ in range(rng.randrange(1, 4)):
            pid = rng.randrange(1, len(PRODUCTS) + 1)
            qty = rng.randrange(1, 5)
            price = Decimal(rng.randrange(199, 9999)) / 100
            total += price * qty
            items.append([item_id, o, pid, qty, f"{price:.2f}"])
            item_id += 1
        status = rng.choice(["paid", "paid", "paid", "shipped", "refunded", "pending"])
        orders.append([o, cust, status, f"{total:.2f}", "EUR", ts(placed), ts(placed + timedelta(hours=rng.randrange(0, 48)))])
    write_csv(HERE / folder / f"orders{suffix}.csv",
              ["id", "customer_id", "status", "total", "currency", "placed_at", "updated_at"], orders)
    write_csv(HERE / folder / f"order_items{suffix}.csv",
              ["id", "order_id", "product_id", "quantity", "unit_price"], items)


def main():
    write_csv(HERE / "data" / "products.csv", ["id", "name", "price", "active"],
              [[i + 1, n, f"{Decimal(rng.randrange(299, 19999)) / 100:.2f}", "true" if i != 7 else "false"]
               for i, n in enumerate(PRODUCTS)])
    day(600, 2000, 1, 1, T0, "data", "")
    # "Day 2": new files to copy into data/ after the first run; only they are loaded then.
    day(40, 150, 601, 2001, T0 + timedelta(days=1), "day2", "-day2")

    (HERE / "crm").mkdir(exist_ok=True)
    with open(HERE / "crm" / "leads.jsonl", "w", encoding="utf-8") as f:
        for i in range(1, 301):
            lead = {
                "id": f"lead_{i:04d}",
                "email": f"lead{i}@example.org",
                "name": f"{rng.choice(FIRST)} {rng.choice(LAST)}",
                "score": rng.randrange(0, 100),
                "custom_fields": {"industry": rng.choice(["retail", "hospitality", "office"]),
                                  "employees": rng.choice([5, 20, 150, None]),
                                  "tags": rng.sample(["vip", "trial", "newsletter", "event"], k=rng.randrange(0, 3))},
                "updated_at": ts(T0 + timedelta(hours=i)),
            }
            f.write(json.dumps(lead, ensure_ascii=False) + "\n")

    (HERE / "events").mkdir(exist_ok=True)
    for d in range(2):
        with open(HERE / "events" / f"2026-11-0{d + 1}.jsonl", "w", encoding="utf-8") as f:
            for i in range(1500):
                at = T0 + timedelta(days=d, seconds=i * 50)
                ev = {"event_id": d * 10000 + i, "type": rng.choice(["page_view", "add_to_cart", "checkout"]),
                      "customer_id": rng.randrange(1, 600), "at": ts(at),
                      "properties": {"path": rng.choice(["/", "/shop", "/cart", "/p/espresso"]), "ms": rng.randrange(20, 900)}}
                f.write(json.dumps(ev) + "\n")

    # Day 2 also updates 30 day-1 orders (shipped or refunded since): rows with an existing key,
    # which the warehouse upserts.
    with open(HERE / "data" / "orders.csv", encoding="utf-8") as f:
        day1 = list(csv.reader(f))[1:]
    updates = []
    for row in day1[::67][:30]:
        o = list(row)
        o[2] = "refunded" if o[2] == "refunded" or int(o[0]) % 5 == 0 else "shipped"
        o[6] = ts(T0 + timedelta(days=1, hours=int(o[0]) % 24))
        updates.append(o)
    with open(HERE / "day2" / "orders-day2.csv", "a", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(updates)


if __name__ == "__main__":
    main()
