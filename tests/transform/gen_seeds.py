#!/usr/bin/env python3
"""Writes the seed CSVs of the `shop` fixture project (tests/transform/shop/seeds/).

The data is invented for these tests: a small online shop selling tea and kitchen
things. The random generator has a fixed seed, so running this again gives the same
bytes; the CSVs it wrote are committed next to the project, and nothing runs this
script during tests.

    python3 tests/transform/gen_seeds.py            # rewrite the CSVs
    python3 tests/transform/gen_seeds.py --check    # exit 1 if they would change

Shape of the data, and the things the fixture relies on:
- raw_customers: 40 rows. Names with non-ASCII letters, one apostrophe and one comma
  (quoted CSV cell). 3 empty emails (a warn-severity not_null test counts them),
  2 empty last names, 2 empty is_active cells. Emails are unique when present and
  have mixed case (stg_customers lower-cases them).
  Customers 36..40 never order (segment `prospect`).
- raw_orders: 120 rows, ids 1..120 in order-date order; customer_id always exists.
  status is one of placed, shipped, delivered, returned, cancelled.
- raw_payments: about 150 rows. Cancelled orders have no payment, every other order has
  one to three. amount_cents is always > 0 (the custom `positive` test).
- raw_fx_rates: 6 currencies x 3 dates. Rates have 4 decimals and are never whole
  numbers, so float8 prints the same way in Postgres and DuckDB (`1.0825`, never `150`
  vs `150.0`).
"""

import csv
import datetime
import io
import pathlib
import random
import sys

SEEDS = pathlib.Path(__file__).resolve().parent / "shop" / "seeds"

FIRST = [
    "Zoë", "Łukasz", "Søren", "Ingrid", "José", "Amélie", "Björn", "Chloé",
    "Dmitri", "Eilís", "Fatima", "Grzegorz", "Hana", "Inès", "Jürgen", "Kenji",
    "Leïla", "Mateo", "Niamh", "Oğuz", "Pál", "Renée", "Siobhán", "Tomás",
    "Ulla", "Väinö", "Wen", "Xóchitl", "Yusuf", "Zsófia", "Anouk", "Bartosz",
    "Camille", "Dagný", "Emeka", "Freya", "Gaël", "Hiroshi", "Ilse", "Jonas",
]
LAST = [
    "Novák", "Østergaard", "Müller", "García", "Kowalczyk", "Brontë", "Ó Briain",
    "Nguyễn", "Şahin", "Dvořák", "Lindqvist", "Pérez", "Haddad", "Tanaka", "Silva",
    "D'Arcy", "Okafor", "Moreau", "Jansen", "Kovačić", "Gonzalez, Jr.", "Wójcik",
    "Fischer", "Rossi", "Sato", "Andersen", "Costa", "Ibrahim", "Laine", "Weiß",
]
ASCII = str.maketrans({
    "ë": "e", "Ł": "L", "ł": "l", "ø": "o", "Ø": "O", "é": "e", "ö": "o", "í": "i",
    "è": "e", "ü": "u", "ï": "i", "ğ": "g", "á": "a", "ä": "a", "ó": "o",
    "ý": "y", "ő": "o", "ú": "u", "Ş": "S", "ş": "s", "ř": "r", "ć": "c", "č": "c",
    "ễ": "e", "ß": "ss", "Ó": "O",
})
DOMAINS = ["example.com", "Example.org", "mail.example.net", "EXAMPLE.com"]
STATUSES = ["placed", "shipped", "delivered", "returned", "cancelled"]
METHODS = ["card", "bank_transfer", "voucher", "gift_card"]
CURRENCIES = {"EUR": 0.9215, "GBP": 0.7893, "JPY": 149.8731, "CHF": 0.8817,
              "SEK": 10.4123, "PLN": 3.9911}
RATE_DATES = ["2024-01-01", "2024-04-01", "2024-07-01"]


def email_for(first, last, n, rng):
    local = first.translate(ASCII)
    if last:
        local += "." + "".join(ch for ch in last.translate(ASCII) if ch.isalnum())
    local = "".join(ch for ch in local if ord(ch) < 128 and (ch.isalnum() or ch == "."))
    return f"{local}{n}@{rng.choice(DOMAINS)}"


def customers(rng):
    rows = []
    start = datetime.date(2023, 1, 1)
    no_last = {7, 23}
    no_email = {5, 18, 31}
    no_active = {12, 27}
    for cid in range(1, 41):
        first = FIRST[cid - 1]
        last = "" if cid in no_last else LAST[(cid * 7) % len(LAST)]
        email = "" if cid in no_email else email_for(first, last, cid, rng)
        signup = start + datetime.timedelta(days=rng.randint(0, 364))
        if cid in no_active:
            active = ""
        else:
            active = "true" if rng.random() < 0.8 else "false"
        rows.append([cid, first, last, email, signup.isoformat(), active])
    return ["id", "first_name", "last_name", "email", "signup_date", "is_active"], rows


def orders(rng):
    rows = []
    day = datetime.date(2024, 1, 2)
    for oid in range(1, 121):
        day += datetime.timedelta(days=rng.choice([0, 1, 1, 2, 3]))
        cust = rng.randint(1, 35)
        if oid <= 35:
            cust = oid  # every customer 1..35 orders at least once
        if oid > 105:
            status = rng.choice(["placed", "placed", "shipped", "cancelled"])
        else:
            status = rng.choice(["delivered"] * 6 + ["shipped", "returned", "cancelled"])
        rows.append([oid, cust, day.isoformat(), status])
    return ["id", "customer_id", "order_date", "status"], rows


def payments(rng, order_rows):
    rows = []
    pid = 0
    for oid, _cust, _day, status in order_rows:
        if status == "cancelled":
            continue
        n = rng.choice([1, 1, 2, 2, 3]) if oid % 2 == 0 else 1
        for _ in range(n):
            pid += 1
            method = rng.choice(["card", "card", "card", "bank_transfer", "voucher", "gift_card"])
            cents = rng.randint(3, 400) * 25 if method != "card" else rng.randint(300, 24999)
            rows.append([pid, oid, method, cents])
    return ["id", "order_id", "method", "amount_cents"], rows


def fx_rates(rng):
    rows = []
    for currency, base in CURRENCIES.items():
        for i, day in enumerate(RATE_DATES):
            rate = round(base * (1 + (rng.random() - 0.5) / 25), 4)
            # never a whole number, and four decimals in the file
            if rate == int(rate):
                rate += 0.0001
            rows.append([currency, f"{rate:.4f}", day])
    return ["currency", "rate", "valid_on"], rows


def render(header, rows):
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return out.getvalue()


def main():
    rng = random.Random(20240613)
    files = {}
    files["raw_customers.csv"] = render(*customers(rng))
    oh, orows = orders(rng)
    files["raw_orders.csv"] = render(oh, orows)
    files["raw_payments.csv"] = render(*payments(rng, orows))
    files["raw_fx_rates.csv"] = render(*fx_rates(rng))
    check = "--check" in sys.argv[1:]
    changed = False
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = SEEDS / name
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old != text:
            changed = True
            if check:
                print(f"{path} would change")
            else:
                path.write_text(text, encoding="utf-8")
    if check and changed:
        sys.exit(1)


if __name__ == "__main__":
    main()
