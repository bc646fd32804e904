"""Writes data/churn.csv, the demo table: 3,000 customers of a SaaS product and whether they
left. Synthetic, from a fixed seed, built to look like a real export: mixed types, missing
values, dates, an id column, money written as "$1,234.50", yes/no flags, and free-text
feedback on a few rows. Whether a customer churned follows a logistic model of their plan,
activity, tickets, tenure, autopay and NPS, plus noise, so a good model reaches about 0.8
accuracy and not 1.0.

Run: ``python data/make_churn.py`` (stdlib only; the output is byte-for-byte the same);
``--rows N --out PATH`` writes a larger table of the same kind (the 100k-row benchmark).
"""

from __future__ import annotations

import argparse
import csv
import math
import random
from datetime import date, timedelta
from pathlib import Path

ROWS = 3000
OUT = Path(__file__).with_name("churn.csv")
PLANS = {"free": 0.0, "basic": 12.0, "pro": 39.0, "business": 99.0}
COUNTRIES = ["US", "US", "US", "UK", "DE", "FR", "IN", "BR", "CA", "AU"]
FEEDBACK = [
    "Too expensive for what we use.",
    "Support took days to answer.",
    "Love the new dashboard, keep it up.",
    "Missing an integration we need.",
    "Works fine, nothing to add.",
    "We moved to a competitor with better pricing.",
]


def money(value: float) -> str:
    return f"${value:,.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    write(args.rows, args.out)


def write(count: int, out: Path) -> None:
    rng = random.Random(20261129)
    rows = []
    for i in range(count):
        plan = rng.choices(list(PLANS), weights=[30, 30, 28, 12])[0]
        seats = 1 if plan == "free" else max(1, int(rng.lognormvariate(1.2, 0.8)))
        spend = PLANS[plan] * seats * rng.uniform(0.9, 1.1)
        signup = date(2021, 1, 1) + timedelta(days=rng.randrange(0, 1400))
        tenure_years = (date(2024, 12, 31) - signup).days / 365
        last_login = int(rng.expovariate(1 / 12))
        tickets = min(int(rng.expovariate(1 / 1.5)), 20)
        autopay = rng.random() < (0.35 if plan == "free" else 0.7)
        nps = min(10, max(0, round(rng.gauss(7, 2.2))))
        logit = (
            -0.6
            + 0.055 * last_login
            + 0.22 * tickets
            - 0.45 * tenure_years
            - 0.9 * autopay
            - 0.28 * (nps - 7)
            + {"free": 0.7, "basic": 0.25, "pro": -0.2, "business": -0.6}[plan]
            + rng.gauss(0, 0.6)
        )
        churned = rng.random() < 1 / (1 + math.exp(-logit))
        rows.append(
            {
                "customer_id": f"CUST-{10001 + i}",
                "signup_date": signup.isoformat(),
                "plan": plan,
                "country": rng.choice(COUNTRIES) if rng.random() > 0.03 else "",
                "seats": str(seats) if rng.random() > 0.05 else "",
                "monthly_spend": money(spend) if rng.random() > 0.04 else "",
                "last_login_days": str(last_login),
                "support_tickets": str(tickets),
                "autopay": "yes" if autopay else "no",
                "nps": str(nps) if rng.random() > 0.3 else "NA",
                "feedback": rng.choice(FEEDBACK) if rng.random() < 0.08 else "",
                "churned": "yes" if churned else "no",
            }
        )
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {out} ({count} rows, {sum(r['churned'] == 'yes' for r in rows)} churned)")


if __name__ == "__main__":
    main()
