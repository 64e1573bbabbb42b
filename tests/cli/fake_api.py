#!/usr/bin/env python3
"""A local HTTP server imitating GitHub, Stripe, HubSpot and Harvest REST APIs (as their docs
describe them), a made-up `crm` API for engine features those lack, and a benchmark endpoint.
Used by tests/cli/rest.rs and bench/rest.sh. Python 3.11 standard library only.

    python3 tests/cli/fake_api.py [--bench-records N (100000)] [--seed S (7)]

Binds 127.0.0.1 on a port the kernel picks, prints `PORT <n>` on stdout, serves until killed
(HTTP/1.1 keep-alive, one thread per connection). Everything is deterministic for a seed.

Data: a server-wide logical clock starts at 2026-01-01T00:00:00Z; every object created or
updated takes the next tick (+61 s), so created/updated timestamps are distinct and increase in
creation/update order. Stripe: every 7th object shares `created` with the one before it.

APIs (auth in brackets):
  GitHub   [Bearer|token ghp_test_token; a User-Agent]  GET /repos/{o}/{r}/issues|pulls|commits
           page/per_page + Link header; issues: state, sort, direction, since; pulls: state,
           sort, direction; commits: since, until (newest first). Repo `missing` is a 404.
  Stripe   [Bearer sk_test_fake or basic user sk_test_fake]  GET /v1/customers|charges|invoices
           limit, starting_after, ending_before, created[gte|gt|lte|lt]; newest first.
  HubSpot  [Bearer pat-test-token or a token from POST /oauth/v1/token (refresh_token grant,
           hs-client / hs-secret / hs-refresh)]  GET /crm/v3/objects/{contacts|companies|deals}
           (limit, after, properties) and POST .../search (filterGroups, sorts, properties,
           limit, after < 10000).
  Harvest  [Bearer harvest-token + Harvest-Account-Id: 123456; a User-Agent]
           GET /v2/clients|projects|time_entries: page, per_page, updated_since, is_active.
  crm      POST /crm/oauth/token (client_credentials, crm-id / crm-secret, form or basic);
           [Bearer <issued token>] GET /crm/accounts (offset, limit, modified_since; total) and
           GET /crm/accounts/{id}/contacts (page_token; relative `next` URL);
           GET /crm/tickets?api_key=crm-key-123 (one page).
  bench    GET /bench/items?page=N&per_page=100 (no auth; pages pre-encoded and cached).

Write APIs, the destinations of `ferry reverse` (targets/*.yml):
  HubSpot  [as above]  POST /crm/v3/objects/{contacts|companies|deals}/batch/upsert|update
           {"inputs": [{"idProperty", "id", "properties"}]}: at most 100 inputs (else 400), no
           repeated id (400), idProperty a unique property (contacts: email, external_id;
           companies, deals: external_id; else 400 "non-unique"). 200, or 207 with `errors`
           ({status, category, message, context: {ids}}) for inputs with an email lacking "@"
           (VALIDATION_ERROR), a non-scalar property value (VALIDATION_ERROR) or, for update,
           no such object (OBJECT_NOT_FOUND). Upserts are idempotent by the unique property
           (emails kept lowercased); new objects take the next numeric id (no randomness), share
           the store the tap reads (list/search see them) and return {id, properties (those
           sent + the id property, hs_object_id, createdate, lastmodifieddate), new, ...}.
           POST .../batch/archive {"inputs": [{"id"}]}: 204; unknown ids ignored, a non-numeric
           id is a 400; archived objects leave list/search.
  Customer.io  [basic cio-site:cio-key]  PUT /api/v1/customers/{identifier} (JSON attributes;
           "" or null removes one; `_update: true` only updates an existing person) and DELETE
           /api/v1/customers/{identifier} -> 200 {}. 400 {"meta": {"error"}} as Customer.io
           documents (docs.customer.io/journeys/invalid-api-requests): more than 300
           attributes, an attribute name over 150 bytes, a value over 1000 bytes (a string's
           UTF-8 bytes, other values as JSON text), a body that is not a JSON object.
  webhook  [any auth or none; recorded]  POST /webhook... {"records": [{"key", "fields"}]} and
           DELETE /webhook... {"deleted": [keys]} -> 200 {"received": n, "errors": [{key,
           message}]} (errors for keys set with /_admin/webhook/reject); any path under
           /webhook, kept apart. A body that is not that shape is a 400.

Admin (never logged nor faulted):
  POST /_admin/mutate {"api", "collection", "add": n, "update": n [, "account": id]}
       -> {"added": [ids], "updated": [ids]} (updates the n lowest ids / oldest objects)
  GET  /_admin/data/{api}/{collection}   the current objects (crm contacts with account_id)
  POST /_admin/faults {"rules": [{"path": substring of path+query, "method"?, "kind":
       429|500|502|503|401|slow|drop|malformed|notjson|hang, "after": k (0), "times": n (1),
       "retry_after"?, "delay"? (slow)}]}   replaces the rules; a `hang` prints `HANG <path>`.
  GET  /_admin/log  [{"t", "method", "path", "status", "auth"[, "fault"]}]; POST /_admin/log/clear
  POST /_admin/expire_tokens   every OAuth access token issued so far stops working.
  GET  /_admin/hubspot/{contacts|companies|deals}  objects written by the batch endpoints, as
       they are now (archived ones with "archived": true, "archivedAt"), by id
  GET  /_admin/customerio/customers   {"customers": {identifier: attributes}, "deleted": [ids]}
  GET  /_admin/webhook/received  [{"method", "path", "auth", "headers", "body"}] every request, in order
  GET  /_admin/webhook/state     {path: {key: fields}} after the upserts and deletes received
  POST /_admin/webhook/reject {"keys": [...]}  those keys get item errors (replaces the list)
  POST /_admin/{hubspot|customerio|webhook}/reset  forgets what was written (HubSpot: objects
       created are dropped, objects updated or archived get back their seeded state)
  The fault rules and the log cover the write APIs as every other route (faulted requests
  never reach them: a webhook request answered by a fault is not in /_admin/webhook/received).
  Log entries of batch writes carry "items": the number of inputs/records in the request.
"""

import argparse
import base64
import copy
import functools
import json
import math
import random
import re
import socket
import threading
import time
import unicodedata
from email.utils import formatdate
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

EPOCH = 1767225600  # 2026-01-01T00:00:00Z
TICK = 61
LOCK = threading.RLock()  # guards every dataset, the log, the faults and the tokens
PRINT_LOCK = threading.Lock()
REPO = "__REPO__"  # replaced by the request's owner/repo in GitHub responses

FIRST = ["Ada", "Grace", "Alan", "Linus", "Margaret", "Ken", "Barbara", "Dennis", "Frances",
         "Edsger", "Radia", "Donald", "Hedy", "José", "Zoë", "Guido"]
LAST = ["Lovelace", "Hopper", "Turing", "Torvalds", "Hamilton", "Thompson", "Liskov", "Ritchie",
        "Allen", "Dijkstra", "Perlman", "Knuth", "Lamarr", "O'Neil", "Johnson", "van Rossum"]
CO_A = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka", "Tyrell",
        "Cyberdyne", "Soylent", "Vandelay"]
CO_B = ["Corp", "Labs", "Industries", "Systems", "Partners", "Group", "Holdings", "Works"]
VERBS = ["Fix", "Add", "Remove", "Refactor", "Document", "Speed up", "Handle", "Support"]
NOUNS = ["login page", "CSV export", "retry logic", "dark mode", "API pagination", "search index",
         "billing webhook", "unicode names 🎉", "timeouts", "the cache"]
CITIES = [("Lisbon", "PT", "1100-148"), ("Berlin", "DE", "10115"), ("Austin", "US", "78701"),
          ("Osaka", "JP", "530-0001"), ("Nairobi", "KE", "00100"), ("Québec", "CA", "G1R 4P5")]
GH_USERS = [("octocat", 583231), ("hubot", 480938), ("monalisa", 9919), ("defunkt", 2),
            ("mojombo", 1), ("pjhyett", 3), ("wycats", 4), ("ezmobius", 5)]
GH_LABELS = [(208045946, "bug"), (208045947, "enhancement"), (208045948, "documentation"),
             (208045949, "question"), (208045950, "good first issue")]
HV_USERS = [(1782959, "Kim Allen"), (1782960, "Sam Jones"), (1782961, "Ana Silva")]
HV_TASKS = [(8083365, "Design"), (8083366, "Programming"), (8083367, "Project Management")]
ALNUM = "0123456789abcdefghijklmnopqrstuvwxyz"  # lowercase: byte order == collation order

# Initial sizes, in creation order.
SIZES = [("github", "issues", 250), ("github", "pulls", 120), ("github", "commits", 150),
         ("stripe", "customers", 230), ("stripe", "charges", 260), ("stripe", "invoices", 140),
         ("hubspot", "contacts", 210), ("hubspot", "companies", 130), ("hubspot", "deals", 120),
         ("harvest", "clients", 45), ("harvest", "projects", 80), ("harvest", "time_entries", 320),
         ("crm", "accounts", 12), ("crm", "tickets", 30)]
HS_DATES = {"contacts": ("createdate", "lastmodifieddate"),
            "companies": ("createdate", "hs_lastmodifieddate"),
            "deals": ("createdate", "hs_lastmodifieddate")}


def iso(t):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def iso_ms(t):
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(t))


@functools.lru_cache(maxsize=1 << 16)
def instant(s):
    """Epoch seconds (float) of an ISO 8601 date or date-time, or None."""
    if not isinstance(s, str):
        return None
    s = re.sub(r" (\d{2}:?\d{2})$", r"+\1", s.strip())  # an unencoded '+' arrives as a space
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", s):
        s += "T00:00:00Z"
    try:
        d = datetime.fromisoformat(s)
    except ValueError:
        return None
    return (d if d.tzinfo else d.replace(tzinfo=timezone.utc)).timestamp()


def edited(text, n):
    return re.sub(r" \(edited \d+\)$", "", text or "") + f" (edited {n})"


@functools.lru_cache(maxsize=None)
def ascii_lower(s):
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode().lower().replace("'", "").replace(" ", "")


def as_int(v, default=None):
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def dumps(obj, indent=None):
    if indent:
        return json.dumps(obj, ensure_ascii=False, indent=indent).encode()
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


class Resp:
    """A response: a status, a body (JSON-encoded unless bytes/str) and extra headers."""
    __slots__ = ("status", "body", "headers", "ctype")

    def __init__(self, status, body, headers=None, ctype="application/json; charset=utf-8"):
        self.status, self.body, self.headers, self.ctype = status, body, headers or {}, ctype


class Req:
    """A parsed request: method, raw target, decoded path, query (last value wins and the pairs
    in order), headers, body bytes."""

    def __init__(self, method, raw, headers, body):
        parts = urlsplit(raw)
        self.method, self.raw, self.headers, self.body = method, raw, headers, body
        self.path = unquote(parts.path)
        self.pairs = parse_qsl(parts.query, keep_blank_values=True)
        self.q = dict(self.pairs)
        self.note = {}  # extra fields for this request's log entry
        self.host = headers.get("Host") or "127.0.0.1"

    def url(self, **replace):
        """This request's absolute URL with some query parameters replaced (or appended)."""
        pairs, done = [], set()
        for k, v in self.pairs:
            if k in replace:
                if k in done:
                    continue
                v = replace[k]
                done.add(k)
            pairs.append((k, v))
        pairs += [(k, v) for k, v in replace.items() if k not in done]
        return f"http://{self.host}{urlsplit(self.raw).path}?{urlencode(pairs)}"

    def json(self):
        try:
            return json.loads(self.body or b"{}")
        except ValueError:
            return None

    def form(self):
        return dict(parse_qsl(self.body.decode("utf-8", "replace"), keep_blank_values=True))

    def basic(self):
        """(user, password) from HTTP basic auth, or None."""
        a = self.headers.get("Authorization", "")
        if a[:6].lower() != "basic ":
            return None
        try:
            user, _, pw = base64.b64decode(a[6:].strip()).decode().partition(":")
        except ValueError:
            return None
        return unquote(user), unquote(pw)

    def bearer(self):
        a = self.headers.get("Authorization", "")
        return a[7:].strip() if a[:7].lower() == "bearer " else None


class World:
    """Every dataset, the logical clock, issued tokens, the request log and the fault rules."""

    def __init__(self, seed, bench_records):
        self.seed, self.rng = seed, random.Random(seed)
        self.clock = EPOCH
        self.edits = 0
        self.data = {api: {} for api, _, _ in SIZES}
        for api, coll, _ in SIZES:
            self.data[api][coll] = []
        self.data["crm"]["contacts"] = []  # every contact, by id; plus contacts_of per account
        self.contacts_of = {}
        self.next_id = {}
        self.tokens = {}  # access token -> "hubspot" | "crm"
        self.expired = set()
        self.token_n = 0
        self.log = []
        self.faults = []
        self.bench_records = bench_records
        self.bench_cache = {}
        self.reset_writes("hubspot")
        self.reset_writes("customerio")
        self.reset_writes("webhook")
        for api, coll, n in SIZES:
            for _ in range(n):
                self.add(api, coll)
            if (api, coll) == ("crm", "accounts"):
                self._initial_contacts()

    def tick(self):
        self.clock += TICK
        return self.clock

    def rid(self, prefix, n):
        return prefix + "".join(self.rng.choice(ALNUM) for _ in range(n))

    def person(self):
        f, l = self.rng.choice(FIRST), self.rng.choice(LAST)
        return f, l, f"{ascii_lower(f)}.{ascii_lower(l)}"

    def company(self):
        return f"{self.rng.choice(CO_A)} {self.rng.choice(CO_B)}"

    def seq(self, key, start, gap=1):
        """The next id of a collection (ids grow by 1..gap)."""
        n = self.next_id.get(key, start - 1) + self.rng.randint(1, gap)
        self.next_id[key] = n
        return n

    # ---- object makers: one per (api, collection); each takes the next tick ----

    def add(self, api, coll, account=None):
        lst, make = self.data[api][coll], getattr(self, f"_new_{api}_{coll}")
        obj = make(len(lst), account) if (api, coll) == ("crm", "contacts") else make(len(lst))
        lst.append(obj)
        return obj

    def _gh_user(self):
        login, uid = self.rng.choice(GH_USERS)
        return {"login": login, "id": uid}

    def _new_github_issues(self, i):
        n, t, r = i + 1, self.tick(), self.rng
        closed = r.random() < 0.4
        o = {"id": 1000 + n, "node_id": base64.b64encode(f"05:Issue{1000 + n}".encode()).decode(),
             "number": n, "title": f"{r.choice(VERBS)} {r.choice(NOUNS)}",
             "state": "closed" if closed else "open", "user": self._gh_user(),
             "labels": [{"id": a, "name": b} for a, b in r.sample(GH_LABELS, r.randint(0, 2))],
             "comments": r.randint(0, 12), "created_at": iso(t), "updated_at": iso(t),
             "closed_at": iso(t) if closed else None,
             "body": None if r.random() < 0.2 else f"Steps to reproduce:\n1. open #{n}\n2. see the \"error\""}
        if n % 5 == 0:
            o["pull_request"] = {"url": f"https://api.github.com/repos/{REPO}/pulls/{n}"}
        return o

    def _new_github_pulls(self, i):
        n, t, r = i + 1, self.tick(), self.rng
        state = r.choice(["open", "closed", "closed"])
        merged = state == "closed" and r.random() < 0.7
        return {"id": 5000 + n, "number": n, "state": state,
                "title": f"{r.choice(VERBS)} {r.choice(NOUNS)}", "user": self._gh_user(),
                "draft": state == "open" and r.random() < 0.2, "created_at": iso(t),
                "updated_at": iso(t), "closed_at": iso(t) if state == "closed" else None,
                "merged_at": iso(t) if merged else None,
                "head": {"ref": f"feature/{n}", "sha": f"{r.getrandbits(160):040x}"},
                "base": {"ref": "main"}}

    def _new_github_commits(self, i):
        t, r = self.tick(), self.rng
        sha = f"{r.getrandbits(160):040x}"
        login, uid = r.choice(GH_USERS)
        name = f"{login.title()} Hubber"
        email = f"{uid}+{login}@users.noreply.github.com"
        return {"sha": sha, "node_id": "C_kwDO" + base64.b64encode(bytes.fromhex(sha[:18])).decode(),
                "commit": {"author": {"name": name, "email": email, "date": iso(t - r.randint(0, 3600))},
                           "committer": {"name": "GitHub", "email": "noreply@github.com", "date": iso(t)},
                           "message": f"{r.choice(VERBS)} {r.choice(NOUNS)}\n\nCloses #{r.randint(1, 250)}"},
                "author": None if i % 9 == 4 else {"login": login, "id": uid},
                "html_url": f"https://github.com/{REPO}/commit/{sha}"}

    def _stripe_created(self, coll, i):
        t = self.tick()
        lst = self.data["stripe"][coll]
        return lst[-1]["created"] if i % 7 == 6 and lst else t  # every 7th shares a second

    def _new_stripe_customers(self, i):
        r, created = self.rng, self._stripe_created("customers", i)
        f, l, e = self.person()
        city = r.choice(CITIES)
        return {"id": self.rid("cus_", 14), "object": "customer", "created": created,
                "email": None if i % 13 == 5 else f"{e}{i}@example.com", "name": f"{f} {l}",
                "balance": r.choice([0, 0, 0, -500, 1250, 9900]), "currency": "usd",
                "delinquent": r.random() < 0.1, "livemode": False, "metadata": {},
                "address": None if r.random() < 0.3 else
                {"city": city[0], "country": city[1], "line1": f"{r.randint(1, 300)} Main St", "postal_code": city[2]}}

    def _new_stripe_charges(self, i):
        r, created = self.rng, self._stripe_created("charges", i)
        status = r.choice(["succeeded"] * 6 + ["failed", "pending"])
        return {"id": self.rid("ch_", 24), "object": "charge", "amount": r.randint(50, 50000),
                "currency": r.choice(["usd", "usd", "eur"]), "created": created,
                "customer": r.choice(self.data["stripe"]["customers"])["id"],
                "paid": status == "succeeded", "status": status,
                "refunded": status == "succeeded" and r.random() < 0.1,
                "description": None if r.random() < 0.3 else f"Order #{r.randint(1000, 9999)}",
                "metadata": {}}

    def _new_stripe_invoices(self, i):
        r, created = self.rng, self._stripe_created("invoices", i)
        status = r.choice(["draft", "open", "paid", "paid", "void"])
        due = r.randint(500, 100000)
        return {"id": self.rid("in_", 24), "object": "invoice", "created": created,
                "customer": r.choice(self.data["stripe"]["customers"])["id"], "amount_due": due,
                "amount_paid": due if status == "paid" else 0, "total": due, "currency": "usd",
                "status": status, "period_start": created - 30 * 86400, "period_end": created}

    def _hs(self, coll, props):
        t = self.tick()
        oid = str(self.seq("hs_" + coll, 51, 3))
        c, m = HS_DATES[coll]
        props = {c: iso_ms(t), **props, m: iso_ms(t), "hs_object_id": oid}
        return {"id": oid, "properties": dict(sorted(props.items())), "createdAt": iso_ms(t),
                "updatedAt": iso_ms(t), "archived": False}

    def _new_hubspot_contacts(self, i):
        f, l, e = self.person()
        return self._hs("contacts", {"email": f"{e}{i}@example.org", "lastname": l,
                                     "firstname": None if i % 11 == 3 else f})

    def _new_hubspot_companies(self, i):
        name = self.company()
        return self._hs("companies", {"name": name, "domain": f"{ascii_lower(name)}{i}.example.com"})

    def _new_hubspot_deals(self, i):
        r = self.rng
        return self._hs("deals", {"dealname": f"{self.company()} renewal",
                                  "amount": f"{r.randint(100, 90000)}.{r.randint(0, 99):02d}",
                                  "dealstage": r.choice(["appointmentscheduled", "qualifiedtobuy", "closedwon", "closedlost"]),
                                  "pipeline": "default"})

    def _new_harvest_clients(self, i):
        t, r = self.tick(), self.rng
        city = r.choice(CITIES)
        return {"id": self.seq("hv_clients", 5735774), "name": self.company(), "is_active": r.random() < 0.85,
                "address": None if r.random() < 0.3 else f"{r.randint(1, 300)} Main St\n{city[0]} {city[2]}",
                "statement_key": f"{r.getrandbits(128):032x}", "currency": r.choice(["USD", "EUR"]),
                "created_at": iso(t), "updated_at": iso(t)}

    def _new_harvest_projects(self, i):
        t, r = self.tick(), self.rng
        client = r.choice(self.data["harvest"]["clients"])
        return {"id": self.seq("hv_projects", 14307913), "client": {"id": client["id"], "name": client["name"]},
                "name": f"{r.choice(NOUNS).capitalize()} project", "code": f"P{i + 1:03d}",
                "is_active": r.random() < 0.8, "is_billable": r.random() < 0.7,
                "budget": None if r.random() < 0.4 else float(r.randint(10, 500) * 10),
                "hourly_rate": None if r.random() < 0.3 else round(r.uniform(50, 200), 2),
                "created_at": iso(t), "updated_at": iso(t)}

    def _new_harvest_time_entries(self, i):
        t, r = self.tick(), self.rng
        project = r.choice(self.data["harvest"]["projects"])
        # Initial entries were logged over the second half of 2025, in id order; entries added
        # later are logged for the day of their tick (so they come first: spent_date desc).
        base = SIZES[11][2]
        day = date(2025, 7, 1) + timedelta(days=i * 183 // base) if i < base \
            else datetime.fromtimestamp(t, timezone.utc).date()
        return {"id": self.seq("hv_time_entries", 636708000), "spent_date": day.isoformat(),
                "hours": round(r.randint(25, 800) / 100, 2),
                "notes": None if r.random() < 0.25 else f"{r.choice(VERBS)} {r.choice(NOUNS)}",
                "is_billed": r.random() < 0.5,
                "user": dict(zip(("id", "name"), r.choice(HV_USERS))),
                "client": dict(project["client"]), "project": {"id": project["id"], "name": project["name"]},
                "task": dict(zip(("id", "name"), r.choice(HV_TASKS))),
                "created_at": iso(t), "updated_at": iso(t)}

    def _new_crm_accounts(self, i):
        t = self.tick()
        acc = {"id": i + 1, "name": self.company(), "tier": self.rng.choice(["free", "pro", "enterprise"]),
               "modified_at": iso(t)}
        self.contacts_of[acc["id"]] = []
        return acc

    def _initial_contacts(self):
        counts = [self.rng.randint(0, 60) for _ in self.data["crm"]["accounts"]]
        counts[1], counts[4] = 0, max(counts[4], 57)  # one account without, one with > 50
        counts[0] = max(counts[0], 3)
        for acc, n in zip(self.data["crm"]["accounts"], counts):
            for _ in range(n):
                self.add("crm", "contacts", acc["id"])

    def _new_crm_contacts(self, i, account):
        t = self.tick()
        cid = self.seq("crm_contacts", 1)
        c = {"id": cid, "email": f"contact{cid}@{ascii_lower(self.company())}.example", "updated_at": iso(t)}
        self.contacts_of[account].append(c)
        return c

    def _new_crm_tickets(self, i):
        r = self.rng
        return {"id": i + 1, "subject": f"{r.choice(VERBS)} {r.choice(NOUNS)}",
                "status": r.choice(["open", "pending", "solved"])}

    # ---- updates: a new tick and a changed field; False when the object cannot change ----

    def edit(self, api, coll, o):
        if coll == "commits":  # commits never change
            return False
        self.edits += 1
        n = self.edits
        if coll == "tickets":  # no timestamps
            o["subject"] = edited(o["subject"], n)
            return True
        if api == "stripe":  # no updated field; `created` stays
            if coll == "customers":
                o["name"], o["metadata"] = edited(o["name"], n), {"edited": str(n)}
            elif coll == "charges":
                o["description"], o["metadata"] = edited(o["description"], n), {"edited": str(n)}
            else:
                o["status"], o["amount_paid"] = "paid", o["amount_due"]
            return True
        t = self.tick()
        if api == "github":
            o["title"], o["updated_at"] = edited(o["title"], n), iso(t)
        elif api == "hubspot":
            p = o["properties"]
            field = {"contacts": "lastname", "companies": "name", "deals": "dealname"}[coll]
            p[field] = edited(p[field], n)
            p[HS_DATES[coll][1]] = o["updatedAt"] = iso_ms(t)
        elif api == "harvest":
            field = "notes" if coll == "time_entries" else "name"
            o[field], o["updated_at"] = edited(o[field], n), iso(t)
        elif coll == "accounts":
            o["name"], o["modified_at"] = edited(o["name"], n), iso(t)
        else:  # crm contacts
            o["email"], o["updated_at"] = re.sub(r"^contact(\d+)(\+e\d+)?@", rf"contact\1+e{n}@", o["email"]), iso(t)
        return True

    def mutate(self, spec):
        api, coll = spec.get("api"), spec.get("collection")
        if coll not in self.data.get(api, {}):
            raise ValueError(f"no collection {api}/{coll}")
        crm_contacts = (api, coll) == ("crm", "contacts")
        account = as_int(spec.get("account")) if crm_contacts else None
        if crm_contacts and account not in self.contacts_of and (account is not None or spec.get("add")):
            raise ValueError("adding crm contacts needs an existing \"account\"")
        key = "sha" if coll == "commits" else "id"
        added = [self.add(api, coll, account)[key] for _ in range(int(spec.get("add", 0)))]
        pool = self.contacts_of[account] if account is not None else self.data[api][coll]
        if api in ("hubspot", "crm"):  # lowest ids (Stripe: the first created)
            pool = sorted(pool, key=lambda o: int(o["id"]))
        updated = [o[key] for o in pool[:int(spec.get("update", 0))] if self.edit(api, coll, o)]
        return {"added": added, "updated": updated}

    def admin_data(self, api, coll):
        if coll not in self.data.get(api, {}):
            return None
        if (api, coll) == ("crm", "contacts"):
            acc = {c["id"]: a for a, cs in self.contacts_of.items() for c in cs}
            return [{**c, "account_id": acc[c["id"]]} for c in self.data["crm"]["contacts"]]
        return self.data[api][coll]

    # ---- state of the write APIs (reverse-ETL destinations) ----

    def reset_writes(self, api):
        """Forgets what the write endpoints of `api` did (the initial state)."""
        if api == "hubspot":
            for coll, touched in getattr(self, "hs_orig", {}).items():
                if not touched:
                    continue
                objs = self.data["hubspot"][coll]
                objs[:] = [o for o in objs if o["id"] not in touched]
                objs += [o for o in touched.values() if o is not None]
                objs.sort(key=lambda o: int(o["id"]))
                key = "hs_" + coll
                self.next_id[key] = max([self.hs_next0[coll]] + [int(o["id"]) for o in objs])
            self.hs_orig = {c: {} for c in HS_DATES}  # id -> seeded object (None: created here)
            self.hs_archived = {c: {} for c in HS_DATES}  # id -> archived object
            self.hs_next0 = {}
        elif api == "customerio":
            self.cio_customers, self.cio_deleted = {}, []
        elif api == "webhook":
            self.hook_received, self.hook_state, self.hook_reject = [], {}, set()
        else:
            raise ValueError(f"no write API {api}")

    def hs_touch(self, coll, o):
        """Remembers an object's seeded state before the first write to it."""
        self.hs_next0.setdefault(coll, self.next_id.get("hs_" + coll, 50))
        if o["id"] not in self.hs_orig[coll]:
            self.hs_orig[coll][o["id"]] = copy.deepcopy(o)

    def hs_create(self, coll, props):
        self.hs_next0.setdefault(coll, self.next_id.get("hs_" + coll, 50))
        key = "hs_" + coll
        self.next_id[key] = self.next_id.get(key, 50) + 1
        t = self.tick()
        oid = str(self.next_id[key])
        c, m = HS_DATES[coll]
        props = {**props, c: iso_ms(t), m: iso_ms(t), "hs_object_id": oid}
        o = {"id": oid, "properties": dict(sorted(props.items())), "createdAt": iso_ms(t),
             "updatedAt": iso_ms(t), "archived": False}
        self.data["hubspot"][coll].append(o)
        self.hs_orig[coll][oid] = None
        return o

    def admin_written(self, api, coll):
        if api == "hubspot" and coll in HS_DATES:
            live = {o["id"]: o for o in self.data["hubspot"][coll] if o["id"] in self.hs_orig[coll]}
            live.update(self.hs_archived[coll])
            return [live[i] for i in sorted(live, key=int)]
        if api == "customerio" and coll == "customers":
            return {"customers": self.cio_customers, "deleted": self.cio_deleted}
        if api == "webhook" and coll == "received":
            return self.hook_received
        if api == "webhook" and coll == "state":
            return self.hook_state
        return None

    def issue_token(self, api):
        self.token_n += 1
        tok = f"{'hs' if api == 'hubspot' else 'crm'}-access-{self.token_n}"
        self.tokens[tok] = api
        return tok

    # ---- faults ----

    def set_faults(self, rules):
        kinds = {"429", "500", "502", "503", "401", "slow", "drop", "malformed", "notjson", "hang"}
        out = []
        for r in rules:
            if not isinstance(r.get("path"), str) or str(r.get("kind")) not in kinds:
                raise ValueError(f"bad rule {r}")
            out.append({**r, "kind": str(r["kind"]), "after": int(r.get("after", 0)),
                        "times": int(r.get("times", 1)), "_seen": 0, "_fired": 0})
        self.faults = out

    def pick_fault(self, method, raw):
        """The rule that fires for this request, if any (every matching rule counts it)."""
        chosen = None
        for r in self.faults:
            if r["path"] not in raw or (r.get("method") and r["method"].upper() != method):
                continue
            r["_seen"] += 1
            if chosen is None and r["_seen"] > r["after"] and r["_fired"] < r["times"]:
                r["_fired"] += 1
                chosen = r
        return chosen


# ---------------------------------------------------------------------------------------------
# The APIs. Each takes (world, req) under LOCK and returns a Resp.

def paginate(items, page, per_page):
    return items[(page - 1) * per_page: page * per_page]


GH_DOCS = "https://docs.github.com/rest"


def github(w, req):
    rate = {"x-ratelimit-limit": "5000", "x-ratelimit-remaining": str(4999 - len(w.log) % 4000),
            "x-ratelimit-reset": str(EPOCH + 3600), "x-ratelimit-resource": "core",
            "X-GitHub-Media-Type": "github.v3; format=json"}
    if not req.headers.get("User-Agent"):
        return Resp(403, b"Request forbidden by administrative rules. Please make sure your request has a User-Agent header "
                         b"(https://docs.github.com/en/rest/overview/resources-in-the-rest-api#user-agent-required). "
                         b"Check https://developer.github.com for other possible causes.\n", ctype="text/plain; charset=utf-8")
    if not re.fullmatch(r"(?i:bearer|token)\s+ghp_test_token\s*", req.headers.get("Authorization", "")):
        return Resp(401, {"message": "Bad credentials", "documentation_url": GH_DOCS}, rate)
    m = re.fullmatch(r"/repos/([^/]+)/([^/]+)/(issues|pulls|commits)/?", req.path)
    if not m or m[2] == "missing" or req.method != "GET":
        return Resp(404, {"message": "Not Found", "documentation_url": GH_DOCS}, rate)
    what, q = m[3], req.q
    items = w.data["github"][what]
    try:
        if what == "commits":
            lo = instant(q["since"]) if "since" in q else float("-inf")
            hi = instant(q["until"]) if "until" in q else float("inf")
            if lo is None or hi is None:
                raise ValueError("since" if lo is None else "until")
            date_of = lambda c: instant(c["commit"]["committer"]["date"])
            items = [c for c in items if lo <= date_of(c) <= hi]
            items.sort(key=lambda c: (date_of(c), c["sha"]), reverse=True)
        else:
            state = q.get("state", "open")
            if state not in ("open", "closed", "all"):
                raise ValueError("state")
            items = [o for o in items if state in ("all", o["state"])]
            sort = q.get("sort", "created")
            keys = {"created": lambda o: o["created_at"], "updated": lambda o: o["updated_at"]}
            if what == "issues":
                keys["comments"] = lambda o: o["comments"]
                if "since" in q:
                    since = instant(q["since"])
                    if since is None:
                        raise ValueError("since")
                    items = [o for o in items if instant(o["updated_at"]) >= since]
                default_dir = "desc"
            else:
                keys["popularity"] = lambda o: o["id"] * 2654435761 % 97  # a stand-in for comment counts
                keys["long-running"] = lambda o: o["created_at"]
                default_dir = "desc" if sort == "created" else "asc"  # as GitHub documents for pulls
            if sort not in keys or q.get("direction", default_dir) not in ("asc", "desc"):
                raise ValueError("sort/direction")
            key = keys[sort]
            items.sort(key=lambda o: (key(o), o["id"]), reverse=q.get("direction", default_dir) == "desc")
    except ValueError as e:
        return Resp(422, {"message": "Validation Failed", "errors": [{"resource": what, "field": str(e), "code": "invalid"}],
                          "documentation_url": GH_DOCS}, rate)
    per_page = min(max(as_int(q.get("per_page"), 30), 1), 100)
    page = max(as_int(q.get("page"), 1), 1)
    last = max(1, math.ceil(len(items) / per_page))
    links = []
    if page > 1:
        links.append((min(page - 1, last), "prev"))
    if page < last:
        links += [(page + 1, "next"), (last, "last")]
    if page > 1:
        links.append((1, "first"))
    headers = dict(rate)
    if links:
        headers["Link"] = ", ".join(f'<{req.url(page=str(p))}>; rel="{rel}"' for p, rel in links)
    slug = json.dumps(f"{m[1]}/{m[2]}", ensure_ascii=False)[1:-1]
    body = dumps(paginate(items, page, per_page)).replace(REPO.encode(), slug.encode())
    return Resp(200, body, headers)


STRIPE_NAMES = {"customers": "customer", "charges": "charge", "invoices": "invoice"}


def stripe_error(status, message, param=None):
    err = {"type": "invalid_request_error", "message": message}
    if param:
        err["param"] = param
    return Resp(status, dumps({"error": err}, 2), {"Request-Id": "req_fake"})


def stripe(w, req):
    basic = req.basic()
    if req.bearer() != "sk_test_fake" and not (basic and basic[0] == "sk_test_fake"):
        return stripe_error(401, "Invalid API Key provided: sk_test_****")
    m = re.fullmatch(r"/v1/(customers|charges|invoices)", req.path)
    if not m or req.method != "GET":
        return stripe_error(404, f"Unrecognized request URL ({req.method}: {req.path}). Please see https://stripe.com/docs "
                                 f"or we can help at https://support.stripe.com/.")
    coll, q = m[1], req.q
    limit = as_int(q.get("limit", "10"))
    if limit is None or not 1 <= limit <= 100:
        return stripe_error(400, "This value must be greater than or equal to 1 and less than or equal to 100.", "limit")
    items = w.data["stripe"][coll]
    for op, test in (("", lambda c, v: c == v), ("[gte]", lambda c, v: c >= v), ("[gt]", lambda c, v: c > v),
                     ("[lte]", lambda c, v: c <= v), ("[lt]", lambda c, v: c < v)):
        if "created" + op in q:
            v = as_int(q["created" + op])
            if v is None:
                return stripe_error(400, f"Invalid integer: {q['created' + op]}", "created" + op)
            items = [o for o in items if test(o["created"], v)]
    key = lambda o: (o["created"], o["id"])
    items = sorted(items, key=key, reverse=True)
    after, before = q.get("starting_after"), q.get("ending_before")
    if after and before:
        return stripe_error(400, "You may only specify one of these parameters: ending_before, starting_after.", "ending_before")
    for param, cursor in (("starting_after", after), ("ending_before", before)):
        if cursor:
            obj = next((o for o in w.data["stripe"][coll] if o["id"] == cursor), None)
            if obj is None:
                return stripe_error(400, f"No such {STRIPE_NAMES[coll]}: '{cursor}'", param)
            if param == "starting_after":
                items = [o for o in items if key(o) < key(obj)]
            else:
                items = [o for o in items if key(o) > key(obj)][-limit - 1:]  # the ones just before it
                has_more = len(items) > limit
                return Resp(200, dumps({"object": "list", "data": items[-limit:], "has_more": has_more,
                                        "url": f"/v1/{coll}"}, 2), {"Request-Id": "req_fake"})
    return Resp(200, dumps({"object": "list", "data": items[:limit], "has_more": len(items) > limit,
                            "url": f"/v1/{coll}"}, 2), {"Request-Id": "req_fake"})


HS_UNAUTH = {"status": "error", "message": "Authentication credentials not found. This API supports OAuth 2.0 authentication "
             "and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
             "correlationId": "00000000-0000-4000-8000-000000000000", "category": "INVALID_AUTHENTICATION"}


def hs_error(status, message, category="VALIDATION_ERROR"):
    return Resp(status, {"status": "error", "message": message,
                         "correlationId": "00000000-0000-4000-8000-000000000000", "category": category})


def hs_value(coll, prop, v):
    """A comparable value: instants in ms for date properties, numbers, else lowercase text."""
    if prop in HS_DATES[coll]:
        if isinstance(v, (int, float)) or (isinstance(v, str) and re.fullmatch(r"-?\d+(\.\d+)?", v)):
            return float(v)
        t = instant(v)
        return None if t is None else t * 1000
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return v.lower()
    return v


def hs_prop(coll, o, prop):
    return o["id"] if prop in ("hs_object_id", "id") else o["properties"].get(prop)


def hs_match(coll, o, f):
    op, prop = f.get("operator", "EQ"), f.get("propertyName")
    raw = hs_prop(coll, o, prop)
    if op == "HAS_PROPERTY":
        return raw is not None
    if op == "NOT_HAS_PROPERTY":
        return raw is None
    if raw is None:
        return op == "NEQ"
    a = hs_value(coll, prop, raw)
    if op in ("IN", "NOT_IN"):
        vals = [hs_value(coll, prop, v) for v in f.get("values", [])]
        return (a in vals) == (op == "IN")
    b = hs_value(coll, prop, f.get("value"))
    if op == "BETWEEN":
        hi = hs_value(coll, prop, f.get("highValue"))
        return type(a) is type(b) is type(hi) and b <= a <= hi
    if op == "CONTAINS_TOKEN":
        return str(b) in str(a)
    if type(a) is not type(b):
        return op == "NEQ"
    return {"EQ": a == b, "NEQ": a != b, "GT": a > b, "GTE": a >= b, "LT": a < b, "LTE": a <= b}[op]


def hs_shape(coll, o, props):
    """An object with the asked properties (plus the ones HubSpot always returns)."""
    if not props:
        return o
    keep = set(props) | {"hs_object_id", *HS_DATES[coll]}
    return {**o, "properties": {k: o["properties"].get(k) for k in sorted(keep)}}


def hubspot(w, req):
    if req.path == "/oauth/v1/token":
        f, basic = req.form(), req.basic()
        cid, secret = (f.get("client_id"), f.get("client_secret")) if "client_id" in f else (basic or (None, None))
        if req.method != "POST" or f.get("grant_type") != "refresh_token" or (cid, secret, f.get("refresh_token")) != \
                ("hs-client", "hs-secret", "hs-refresh"):
            return Resp(400, {"status": "BAD_REFRESH_TOKEN", "message": "missing or invalid refresh token"})
        return Resp(200, {"token_type": "bearer", "refresh_token": "hs-refresh",
                          "access_token": w.issue_token("hubspot"), "expires_in": 1800})
    tok = req.bearer()
    if tok in w.expired and w.tokens.get(tok) == "hubspot":
        return hs_error(401, "The OAuth token used to make this call expired 1 second(s) ago.", "EXPIRED_AUTHENTICATION")
    if tok != "pat-test-token" and w.tokens.get(tok) != "hubspot" or tok in w.expired:
        return Resp(401, HS_UNAUTH)
    m = re.fullmatch(r"/crm/v3/objects/(contacts|companies|deals)/batch/(upsert|update|archive)", req.path)
    if m and req.method == "POST":
        return hs_batch(w, req, m[1], m[2])
    m = re.fullmatch(r"/crm/v3/objects/(contacts|companies|deals)(/search|/[^/]+)?", req.path)
    if not m:
        return hs_error(404, f"Unable to infer object type from: {req.path}", "OBJECT_NOT_FOUND")
    coll, rest = m[1], m[2] or ""
    objs = w.data["hubspot"][coll]
    if rest == "/search" and req.method == "POST":
        body = req.json()
        if not isinstance(body, dict):
            return hs_error(400, "Invalid input JSON on line 1")
        limit, after = as_int(body.get("limit", 10)), as_int(body.get("after", 0))
        if limit is None or not 0 < limit <= 200:
            return hs_error(400, "limit must be between 1 and 200")
        if after is None or after < 0:
            return hs_error(400, f"Invalid after: {body.get('after')}")
        if after >= 10000:
            return hs_error(400, "Cannot page through more than 10000 results: after must be less than 10000")
        groups = body.get("filterGroups") or []
        try:
            hits = [o for o in objs if not groups or any(all(hs_match(coll, o, f) for f in g.get("filters", []))
                                                         for g in groups)]
        except (KeyError, TypeError, AttributeError):
            return hs_error(400, "Invalid filter")
        hits.sort(key=lambda o: int(o["id"]))
        for s in reversed(body.get("sorts") or []):
            prop = s.get("propertyName") if isinstance(s, dict) else s
            def null_last(o, prop=prop):
                v = hs_value(coll, prop, hs_prop(coll, o, prop))
                return (v is None, isinstance(v, str), 0 if v is None else v)
            hits.sort(key=null_last, reverse=isinstance(s, dict) and s.get("direction") == "DESCENDING")
        out = {"total": len(hits), "results": [hs_shape(coll, o, body.get("properties")) for o in hits[after:after + limit]]}
        if after + limit < len(hits):
            out["paging"] = {"next": {"after": str(after + limit)}}
        return Resp(200, out)
    props = [p for v in (v for k, v in req.pairs if k == "properties") for p in v.split(",") if p]
    if rest and req.method == "GET":
        o = next((o for o in objs if o["id"] == rest[1:]), None)
        return Resp(200, hs_shape(coll, o, props)) if o else hs_error(404, "Object not found", "OBJECT_NOT_FOUND")
    if rest or req.method != "GET":
        return hs_error(404, f"No route for {req.method} {req.path}", "OBJECT_NOT_FOUND")
    limit, after = as_int(req.q.get("limit", 10)), as_int(req.q.get("after", 0))
    if limit is None or not 0 < limit <= 100 or after is None:
        return hs_error(400, "limit must be between 1 and 100 and after an object id")
    hits = [] if req.q.get("archived") == "true" else sorted((o for o in objs if int(o["id"]) >= after), key=lambda o: int(o["id"]))
    out = {"results": [hs_shape(coll, o, props) for o in hits[:limit]]}
    if len(hits) > limit:
        nxt = hits[limit]["id"]
        out["paging"] = {"next": {"after": nxt, "link": req.url(after=nxt)}}
    return Resp(200, out)


# Properties with unique values in the fake portal (the ones an upsert may go by): contacts'
# email, and a custom unique property on every object.
HS_UNIQUE = {"contacts": {"email", "external_id"}, "companies": {"external_id"}, "deals": {"external_id"}}
HS_TYPE_ID = {"contacts": "0-1", "companies": "0-2", "deals": "0-3"}
HS_BATCH_MAX = 100


def hs_string(v):
    """A property value as HubSpot stores it (every property is a string; "" or null clears)."""
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def hs_invalid(name, value, error, message):
    detail = [{"isValid": False, "message": message, "error": error, "name": name,
               "localizedErrorMessage": message}]
    return f"Property values were not valid: {json.dumps(detail, separators=(',', ':'))}"


def hs_batch(w, req, coll, op):
    """POST /crm/v3/objects/<coll>/batch/upsert|update|archive."""
    body = req.json()
    inputs = body.get("inputs") if isinstance(body, dict) else None
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        return hs_error(400, "Invalid input JSON on line 1, column 1: Cannot build BatchInput, some of required "
                             "attributes are not set [inputs]")
    req.note["items"] = len(inputs)
    if len(inputs) > HS_BATCH_MAX:
        return hs_error(400, f"Batch input limit exceeded: {len(inputs)} inputs were given; the limit is "
                             f"{HS_BATCH_MAX}.")
    started = iso_ms(w.clock)
    if op == "archive":
        ids = [i.get("id") for i in inputs]
        bad = [i for i in ids if not (isinstance(i, int) and not isinstance(i, bool) or isinstance(i, str) and i.isdigit())]
        if bad:
            return hs_error(400, f"Invalid object ids: {json.dumps(bad)}; ids must be numeric strings")
        objs = w.data["hubspot"][coll]
        for oid in map(str, ids):
            o = next((o for o in objs if o["id"] == oid), None)
            if o is None:
                continue  # unknown or already archived: nothing to do, as HubSpot does
            w.hs_touch(coll, o)
            objs.remove(o)
            w.hs_archived[coll][oid] = {**o, "archived": True, "archivedAt": iso_ms(w.tick())}
        return Resp(204, b"")
    # upsert / update
    ids = []
    for i in inputs:
        idp, oid = i.get("idProperty"), i.get("id")
        if not isinstance(oid, str) or not oid or not isinstance(i.get("properties", {}), dict):
            return hs_error(400, "Invalid input JSON: every input needs a string `id` and an object `properties`")
        if op == "upsert" and not idp:
            return hs_error(400, "idProperty is required for an upsert")
        if idp and idp not in HS_UNIQUE[coll]:
            return hs_error(400, f"Unable to perform update/upsert by non-unique {HS_TYPE_ID[coll]} property {idp} "
                                 f"in portal ID 12345678")
        ids.append((idp, oid.lower() if idp == "email" else oid))
    dup = sorted({o for _, o in ids if sum(1 for _, x in ids if x == o) > 1})
    if dup:
        return hs_error(400, f"Duplicate IDs found in batch input: {dup}. IDs must be unique")
    results, errors = [], []
    objs = w.data["hubspot"][coll]
    for i, (idp, norm) in zip(inputs, ids):
        given, props = i["id"], i.get("properties") or {}
        complex_ = [k for k, v in props.items() if isinstance(v, (dict, list))]
        if complex_:
            errors.append({"status": "error", "category": "VALIDATION_ERROR", "context": {"ids": [given]},
                           "message": hs_invalid(complex_[0], props[complex_[0]], "INVALID_PROPERTY_VALUE",
                                                 f"{json.dumps(props[complex_[0]])} is not a valid value for {complex_[0]}")})
            continue
        email = norm if idp == "email" else hs_string(props.get("email"))
        if coll == "contacts" and email is not None and "@" not in email:
            errors.append({"status": "error", "category": "VALIDATION_ERROR", "context": {"ids": [given]},
                           "message": hs_invalid("email", email, "INVALID_EMAIL", f"Email address {email} is invalid")})
            continue
        new_props = {k: hs_string(v) for k, v in props.items()}
        if "email" in new_props and new_props["email"]:
            new_props["email"] = new_props["email"].lower()
        if idp:
            new_props[idp] = norm
            same = (lambda v: (v or "").lower() == norm) if idp == "email" else (lambda v: v == norm)
            o = next((o for o in objs if same(o["properties"].get(idp))), None)
        else:
            o = next((o for o in objs if o["id"] == norm), None)
        created = o is None
        if created and op == "update":
            errors.append({"status": "error", "category": "OBJECT_NOT_FOUND", "context": {"ids": [given]},
                           "message": f"Could not get some {coll[:-1].upper()} objects, they may be deleted or not "
                                      f"exist. Check that ids are valid."})
            continue
        if created:
            o = w.hs_create(coll, {k: v for k, v in new_props.items() if v is not None})
        elif any(o["properties"].get(k) != v for k, v in new_props.items()):
            w.hs_touch(coll, o)
            t = iso_ms(w.tick())
            p = {**o["properties"], **new_props, HS_DATES[coll][1]: t}
            o["properties"], o["updatedAt"] = dict(sorted(p.items())), t
        keep = set(props) | ({idp} if idp else set()) | {"hs_object_id", *HS_DATES[coll]}
        res = {"id": o["id"], "properties": {k: o["properties"].get(k) for k in sorted(keep)},
               "createdAt": o["createdAt"], "updatedAt": o["updatedAt"], "archived": False}
        if op == "upsert":
            res["new"] = created
        results.append(res)
    out = {"status": "COMPLETE", "results": results, "startedAt": started, "completedAt": iso_ms(w.clock)}
    if errors:
        out.update(numErrors=len(errors), errors=errors)
    return Resp(207 if errors else 200, out)


# ---------------------------------------------------------------------------------------------
# Customer.io Track API v1 (docs.customer.io/api/track): identify and delete people.

CIO_AUTH = ("cio-site", "cio-key")
CIO_UNAUTH = {"meta": {"error": "Unauthorized request"}}


def cio_error(message):
    return Resp(400, {"meta": {"error": message}})


def customerio(w, req):
    if req.basic() != CIO_AUTH:
        return Resp(401, CIO_UNAUTH)
    m = re.fullmatch(r"/api/v1/customers/([^/]+)", urlsplit(req.raw).path)
    if not m or req.method not in ("PUT", "DELETE"):
        return Resp(404, {"meta": {"error": f"no route {req.method} {req.path}"}})
    ident = unquote(m[1])
    if req.method == "DELETE":
        w.cio_customers.pop(ident, None)
        w.cio_deleted.append(ident)
        return Resp(200, {})
    attrs = req.json()
    if not isinstance(attrs, dict):
        return cio_error("request body must be a JSON object of attributes")
    if len(attrs) > 300:
        return cio_error("cannot identify more than 300 attributes in one request")
    for k, v in attrs.items():
        if len(k.encode()) > 150:
            return cio_error("attribute name cannot be longer than 150 bytes")
        size = len((v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)).encode())
        if size > 1000:
            return cio_error(f"value for attribute '{k}' cannot be longer than 1000 bytes")
    update_only = attrs.pop("_update", False) is True
    if update_only and ident not in w.cio_customers:
        return Resp(200, {})
    person = w.cio_customers.setdefault(ident, {})
    for k, v in attrs.items():
        if v is None or v == "":
            person.pop(k, None)
        else:
            person[k] = v
    return Resp(200, {})


# ---------------------------------------------------------------------------------------------
# A webhook receiver (targets/webhook.yml): stores what it gets.

def webhook(w, req):
    body = req.json()
    w.hook_received.append({"method": req.method, "path": req.raw, "auth": req.headers.get("Authorization"),
                            "headers": dict(req.headers),
                            "body": body if body is not None else req.body.decode("utf-8", "replace")})
    field = {"POST": "records", "DELETE": "deleted"}.get(req.method)
    if field is None:
        return Resp(405, {"error": f"{req.method} is not accepted; POST records or DELETE keys"})
    items = body.get(field) if isinstance(body, dict) else None
    if not isinstance(items, list):
        return Resp(400, {"error": f"expected a JSON object with a `{field}` array"})
    if field == "records" and not all(isinstance(r, dict) and "key" in r for r in items):
        return Resp(400, {"error": "every record needs a `key`"})
    req.note["items"] = len(items)
    state, errors = w.hook_state.setdefault(urlsplit(req.raw).path, {}), []
    for it in items:
        key = str(it["key"] if field == "records" else it)
        if key in w.hook_reject:
            errors.append({"key": key, "message": "rejected by the receiver"})
        elif field == "records":
            state[key] = it.get("fields")
        else:
            state.pop(key, None)
    return Resp(200, {"received": len(items), "errors": errors})


HV_UNAUTH = {"error": "invalid_token",
             "error_description": "The access token provided is expired, revoked, malformed or invalid for other reasons."}


def harvest(w, req):
    if not req.headers.get("User-Agent"):
        return Resp(400, {"error": "invalid_request", "error_description": "A User-Agent header is required."})
    if req.bearer() != "harvest-token" or req.headers.get("Harvest-Account-Id") != "123456":
        return Resp(401, HV_UNAUTH)
    m = re.fullmatch(r"/v2/(clients|projects|time_entries)", req.path)
    if not m or req.method != "GET":
        return Resp(404, {"status": 404, "error": "Not Found"})
    coll, q = m[1], req.q
    items = w.data["harvest"][coll]
    if "updated_since" in q:
        since = instant(q["updated_since"])
        if since is None:
            return Resp(422, {"message": "updated_since is not a valid ISO 8601 date-time"})
        items = [o for o in items if instant(o["updated_at"]) >= since]
    for flag in ("is_active", "is_billed"):
        if flag in q and q[flag] in ("true", "false"):
            items = [o for o in items if o.get(flag) == (q[flag] == "true")]
    for ref in ("client_id", "project_id"):
        if ref in q and coll != "clients":
            items = [o for o in items if str(o.get(ref[:-3], {}).get("id")) == q[ref]]
    if coll == "time_entries":
        items = [o for o in items if q.get("from", "") <= o["spent_date"] and o["spent_date"] <= q.get("to", "9999")]
        items = sorted(items, key=lambda o: (o["spent_date"], o["id"]), reverse=True)
    else:
        items = sorted(items, key=lambda o: (o["created_at"], o["id"]), reverse=True)
    per_page = min(max(as_int(q.get("per_page"), 2000), 1), 2000)
    page = max(as_int(q.get("page"), 1), 1)
    total_pages = math.ceil(len(items) / per_page)
    nxt, prev = (page + 1 if page < total_pages else None), (page - 1 if page > 1 else None)
    link = lambda p: None if p is None else req.url(page=str(p), per_page=str(per_page))
    return Resp(200, {coll: paginate(items, page, per_page), "per_page": per_page, "total_pages": total_pages,
                      "total_entries": len(items), "next_page": nxt, "previous_page": prev, "page": page,
                      "links": {"first": link(1), "next": link(nxt), "previous": link(prev),
                                "last": link(max(total_pages, 1))}})


def crm(w, req):
    path = req.path
    if path == "/crm/oauth/token":
        f, basic = req.form(), req.basic() or (None, None)
        creds = {(f.get("client_id"), f.get("client_secret")), basic}
        if req.method != "POST" or ("crm-id", "crm-secret") not in creds:
            return Resp(401, {"error": "invalid_client"})
        if f.get("grant_type") != "client_credentials":
            return Resp(400, {"error": "unsupported_grant_type"})
        return Resp(200, {"access_token": w.issue_token("crm"), "token_type": "Bearer", "expires_in": 3600})
    if path == "/crm/tickets" and req.method == "GET":
        if req.q.get("api_key") != "crm-key-123":
            return Resp(403, {"error": "bad key"})
        return Resp(200, {"results": w.data["crm"]["tickets"]})
    if not path.startswith("/crm/accounts") or req.method != "GET":
        return Resp(404, {"error": "not found"})
    tok = req.bearer()
    if w.tokens.get(tok) != "crm" or tok in w.expired:
        return Resp(401, {"error": "invalid_token"})
    if path == "/crm/accounts":
        offset, limit = as_int(req.q.get("offset"), 0), as_int(req.q.get("limit"), 20)
        if offset is None or offset < 0 or limit is None or limit < 1:
            return Resp(400, {"error": "bad offset or limit"})
        items = w.data["crm"]["accounts"]
        if "modified_since" in req.q:
            since = instant(req.q["modified_since"])
            if since is None:
                return Resp(400, {"error": "bad modified_since"})
            items = [a for a in items if instant(a["modified_at"]) >= since]
        items = sorted(items, key=lambda a: (a["modified_at"], a["id"]))
        return Resp(200, {"total": len(items), "items": items[offset:offset + min(limit, 50)]})
    m = re.fullmatch(r"/crm/accounts/(\d+)/contacts", path)
    if not m or int(m[1]) not in w.contacts_of:
        return Resp(404, {"error": "no such account"})
    acc, tok = int(m[1]), req.q.get("page_token")
    offset = 0
    if tok:
        try:
            a, _, o = base64.urlsafe_b64decode(tok.encode()).decode().partition(":")
            assert int(a) == acc
            offset = int(o)
        except (ValueError, AssertionError, UnicodeDecodeError):
            return Resp(400, {"error": "bad page_token"})
    items = sorted(w.contacts_of[acc], key=lambda c: (c["updated_at"], c["id"]))
    nxt = None
    if offset + 25 < len(items):
        nxt = f"/crm/accounts/{acc}/contacts?page_token=" + base64.urlsafe_b64encode(f"{acc}:{offset + 25}".encode()).decode()
    return Resp(200, {"data": items[offset:offset + 25], "next": nxt})


ROUTES = [("/repos/", github), ("/v1/", stripe), ("/crm/v3/", hubspot), ("/oauth/v1/", hubspot),
          ("/v2/", harvest), ("/crm/", crm), ("/api/v1/", customerio), ("/webhook", webhook)]
UNAUTH = {github: {"message": "Bad credentials", "documentation_url": GH_DOCS},
          stripe: {"error": {"message": "Invalid API Key provided: sk_test_****", "type": "invalid_request_error"}},
          hubspot: HS_UNAUTH, harvest: HV_UNAUTH, crm: {"error": "invalid_token"}, customerio: CIO_UNAUTH,
          webhook: {"error": "unauthorized"}}


def route(path):
    return next((fn for prefix, fn in ROUTES if path.startswith(prefix)), None)


# ---------------------------------------------------------------------------------------------
# bench: pages generated on first use and cached encoded

BENCH_TAGS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta"]
M64 = (1 << 64) - 1


def bench_record(seed, i):
    """Record i, from a 64-bit hash of (seed, i) (cheaper than a Random per record)."""
    h = (i * 0x9E3779B97F4A7C15 + seed * 0xBF58476D1CE4E5B9) & M64
    h = ((h ^ (h >> 31)) * 0x94D049BB133111EB) & M64
    h ^= h >> 29
    f, l, city = FIRST[h & 15], LAST[(h >> 4) & 15], CITIES[(h >> 8) % len(CITIES)]
    t = EPOCH - 86400 * 365 + i * 37
    tag = (h >> 56) & 7
    return {"id": i, "name": f"{f} {l}", "email": f"{ascii_lower(f)}.{ascii_lower(l)}.{i}@example.com",
            "amount": (h >> 12) % 10_000_001 / 100, "active": (h >> 36) % 10 < 8,
            "created_at": iso(t), "updated_at": iso(t + (h >> 40) % (86400 * 30)),
            "tags": [BENCH_TAGS[tag], BENCH_TAGS[(tag + 1 + (h >> 59) % 7) & 7]],
            "address": {"city": city[0], "zip": city[2]}}


def bench_page(w, page, per_page):
    """A page's response body, encoded once and cached."""
    body = w.bench_cache.get((page, per_page))
    if body is None:
        n = w.bench_records
        total = math.ceil(n / per_page)
        items = [bench_record(w.seed, i) for i in range((page - 1) * per_page + 1, min(page * per_page, n) + 1)]
        body = dumps({"items": items, "page": page, "total_pages": total,
                      "next_page": page + 1 if page < total else None})
        w.bench_cache[(page, per_page)] = body
    return body


# ---------------------------------------------------------------------------------------------
# admin

def admin(w, method, path, body):
    try:
        spec = json.loads(body or b"null")
    except ValueError:
        return Resp(400, {"error": "body is not JSON"})
    try:
        if method == "POST" and path == "/_admin/mutate":
            return Resp(200, w.mutate(spec))
        if method == "GET" and path.startswith("/_admin/data/"):
            parts = path.split("/")
            data = w.admin_data(parts[3], parts[4]) if len(parts) == 5 else None
            if data is None:
                return Resp(404, {"error": f"no collection {path[13:]}"})
            return Resp(200, dumps(data).replace(REPO.encode(), b"octo-org/octo-repo"))
        if method == "POST" and path == "/_admin/faults":
            w.set_faults(spec.get("rules", []))
            return Resp(200, {"rules": len(w.faults)})
        if method == "GET" and path == "/_admin/log":
            return Resp(200, w.log)
        if method == "POST" and path == "/_admin/log/clear":
            w.log = []
            return Resp(200, {})
        if method == "POST" and path == "/_admin/expire_tokens":
            w.expired.update(w.tokens)
            return Resp(200, {"expired": len(w.tokens)})
        m = re.fullmatch(r"/_admin/(hubspot|customerio|webhook)/(\w+)", path)
        if m and method == "POST" and m[2] == "reset":
            w.reset_writes(m[1])
            return Resp(200, {})
        if m and method == "POST" and (m[1], m[2]) == ("webhook", "reject"):
            w.hook_reject = {str(k) for k in spec.get("keys", [])}
            return Resp(200, {"keys": len(w.hook_reject)})
        if m and method == "GET":
            data = w.admin_written(m[1], m[2])
            if data is not None:
                return Resp(200, data)
    except (ValueError, TypeError, AttributeError, KeyError) as e:
        return Resp(400, {"error": str(e)})
    return Resp(404, {"error": f"no admin endpoint {method} {path}"})


# ---------------------------------------------------------------------------------------------
# HTTP

REASONS = {200: "OK", 204: "No Content", 207: "Multi-Status", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 422: "Unprocessable Entity", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable"}


class Headers(dict):
    """Request headers, looked up case-insensitively (keys stored lowercase)."""

    def get(self, key, default=None):
        return dict.get(self, key.lower(), default)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake_api"
    disable_nagle_algorithm = True

    def log_message(self, *args):  # silence per-request logging
        pass

    def parse_request(self):
        """A lean replacement of the base class's (whose email-based header parsing is most of
        the cost of a request): request line, headers, keep-alive, Expect: 100-continue."""
        words = self.raw_requestline.decode("latin-1").split()
        self.command, self.close_connection = None, True
        self.requestline = self.raw_requestline.decode("latin-1").rstrip("\r\n")
        if len(words) != 3 or not words[2].startswith("HTTP/1."):
            self.request_version = "HTTP/1.0"
            self.send_error(400, "Bad request line")
            return False
        self.command, self.path, self.request_version = words
        headers = Headers()
        for _ in range(200):
            line = self.rfile.readline(65537)
            if line in (b"\r\n", b"\n", b""):
                break
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        self.headers = headers
        conn = headers.get("Connection", "").lower()
        self.close_connection = conn == "close" or (self.request_version == "HTTP/1.0" and conn != "keep-alive")
        if headers.get("Expect", "").lower() == "100-continue":
            self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        return True

    def send(self, r):
        body = r.body if isinstance(r.body, bytes) else r.body.encode() if isinstance(r.body, str) else dumps(r.body)
        # Date on the logical clock, as a real API's Date agrees with its updated_at values.
        head = [f"HTTP/1.1 {r.status} {REASONS.get(r.status, 'Status')}", f"Content-Type: {r.ctype}",
                f"Content-Length: {len(body)}", f"Date: {formatdate(self.server.world.clock, usegmt=True)}"]
        head += [f"{k}: {v}" for k, v in r.headers.items()]
        if self.close_connection:
            head.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            head.append("Connection: keep-alive")
        try:
            self.wfile.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body)
        except OSError:  # the client went away (a timeout during a `slow` fault)
            self.close_connection = True

    def read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        n = as_int(self.headers.get("Content-Length"), 0)
        return self.rfile.read(n) if n > 0 else b""

    def handle_any(self):
        w, method, raw = self.server.world, self.command, self.path
        body = self.read_body()
        path = urlsplit(raw).path
        if path.startswith("/_admin/"):
            with LOCK:
                return self.send(admin(w, method, path, body))
        entry = {"t": time.monotonic(), "method": method, "path": raw, "status": None,
                 "auth": self.headers.get("Authorization")}
        with LOCK:
            w.log.append(entry)
            rule = w.pick_fault(method, raw) if w.faults else None
        if rule:
            entry["fault"] = kind = rule["kind"]
            if kind == "slow":
                time.sleep(float(rule.get("delay", 1)))
            elif kind == "drop":
                entry["status"] = "drop"
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            elif kind == "hang":
                entry["status"] = "hang"
                try:
                    with PRINT_LOCK:
                        print(f"HANG {raw}", flush=True)
                except OSError:
                    pass
                threading.Event().wait()
            else:
                r = fault_response(rule, path)
                entry["status"] = r.status
                return self.send(r)
        if path == "/bench/items" and method == "GET":
            q = dict(parse_qsl(urlsplit(raw).query))
            r = Resp(200, bench_page(w, max(as_int(q.get("page"), 1), 1), min(max(as_int(q.get("per_page"), 100), 1), 1000)))
        else:
            fn = route(unquote(path))
            req = Req(method, raw, self.headers, body)
            with LOCK:
                r = fn(w, req) if fn else Resp(404, {"message": "Not Found"})
                entry.update(req.note)
        entry["status"] = r.status
        self.send(r)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = handle_any


def fault_response(rule, path):
    kind = rule["kind"]
    headers = {"Retry-After": str(rule["retry_after"])} if rule.get("retry_after") is not None else {}
    if kind == "malformed":
        return Resp(200, b'{"data": [{"id": 1,')
    if kind == "notjson":
        return Resp(200, b"<html>Service maintenance</html>", ctype="text/html; charset=utf-8")
    if kind == "401":
        return Resp(401, UNAUTH.get(route(path), {"error": "unauthorized"}))
    if kind == "502":
        return Resp(502, b"<html><head><title>502 Bad Gateway</title></head><body>502 Bad Gateway</body></html>",
                    headers, ctype="text/html")
    return Resp(int(kind), {"error": REASONS[int(kind)], "message": f"fault injected: {kind}"}, headers)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench-records", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    server = Server(("127.0.0.1", 0), Handler)
    server.world = World(args.seed, args.bench_records)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
