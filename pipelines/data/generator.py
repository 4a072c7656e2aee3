"""Library of the ``generate`` stage (its CLI is :mod:`pipelines.generate`).

Seeded generator of realistic support tickets: the embedded default data set.

Ten categories whose vocabulary overlaps on purpose (billing/refund,
access/security, bug/performance, ...), so a bag-of-words model is good but not
perfect. The generator also plants the defects the data gates must catch:

* exact duplicates (a ticket resubmitted) and near duplicates (a follow-up with small edits);
* empty or whitespace-only bodies, HTML fragments, e-mail addresses and phone numbers;
* label noise, repeat customers with a preferred topic (group leakage);
* post-outcome columns that leak the label: ``resolved_by_team``, ``resolution_note``
  (written after the category was known) and ``resolved_at``.

``drift=True`` produces a later period: another category mix, a new product
(*Nimbus Copilot*) with its own vocabulary, and longer texts.
"""

from __future__ import annotations
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated
import numpy as np
import pandas as pd
import typer
from pipelines.config import GenerateConfig, load_params
from pipelines.errors import run_cli
from pipelines.io import atomic_outputs, write_parquet


CATEGORIES = [
    "billing", "refund", "account_access", "bug_report", "performance",
    "shipping", "cancellation", "feature_request", "security", "integrations",
]


PHRASES: dict[str, list[str]] = {
    "billing": [
        "I was charged {a} twice this month", "my invoice shows the wrong amount",
        "the payment for order {n} was taken but the plan did not change",
        "why did my subscription price go up to {a}", "please update the billing address on my invoice",
        "the card on file was declined but I was still charged", "I need a VAT invoice for {d}",
        "the annual plan renewal charged me {a} instead of the discount price",
        "can you explain the extra fee on my statement", "the tax on my invoice looks wrong",
    ],
    "refund": [
        "I would like a refund for order {n}", "please refund the {a} you charged by mistake",
        "I returned the item on {d} and still have no refund", "how long does a refund take to reach my card",
        "you promised a refund of {a} last week", "the refund was issued to an old card",
        "I want my money back for the unused months", "the partial refund was less than expected",
        "please reverse the charge and send the money back", "my refund status still says pending",
    ],
    "account_access": [
        "I cannot log in to my account", "the password reset email never arrives",
        "my account is locked after too many attempts", "I changed my phone and lost my two factor codes",
        "the login page says my username does not exist", "I need to change the email on my account",
        "single sign on stopped letting me in on {d}", "I am stuck in a login loop on the {p}",
        "please unlock my account so I can sign in", "the verification code is rejected every time",
    ],
    "bug_report": [
        "the {p} crashes when I click export", "I get an error 500 when saving a report",
        "the button on the {p} does nothing", "data in the {p} shows yesterday's numbers",
        "the app throws an exception after the update", "charts are blank since the last release",
        "the CSV export has broken columns", "dates are shown in the wrong timezone on the {p}",
        "the {p} shows an error message and closes", "filters reset every time I open the {p}",
    ],
    "performance": [
        "the {p} is extremely slow today", "pages take over {n} seconds to load",
        "the dashboard keeps timing out", "search results take forever to appear",
        "the {p} freezes for a minute before responding", "latency got much worse since {d}",
        "uploads are crawling even on a fast connection", "the API responds slowly under load",
        "reports take ages to generate now", "the {p} is lagging and the spinner never stops",
    ],
    "shipping": [
        "my package has not arrived yet", "the tracking number for order {n} does not work",
        "the courier says the parcel was delivered but I have nothing", "my order shipped to the wrong address",
        "when will order {n} be dispatched", "the box arrived damaged",
        "delivery was supposed to be on {d}", "can I change the delivery address for order {n}",
        "the shipment is stuck in customs", "I received the wrong item in my package",
    ],
    "cancellation": [
        "please cancel my subscription", "I want to close my account at the end of the month",
        "how do I stop the automatic renewal", "cancel order {n} before it ships",
        "I no longer need the service, please terminate it", "downgrade me and cancel the pro plan",
        "I tried to cancel online but the button fails", "do not renew my plan on {d}",
        "end my trial now so I am not charged", "I am switching providers so cancel everything",
    ],
    "feature_request": [
        "it would be great if the {p} had a dark mode", "please add an option to export to PDF",
        "can you support more languages in the {p}", "we would love bulk editing",
        "I suggest adding keyboard shortcuts", "please consider a calendar view for tasks",
        "a way to share reports with guests would help us", "could you add custom fields to the {p}",
        "we need scheduled exports", "please let us customise the email templates",
    ],
    "security": [
        "I received a suspicious email claiming to be from you", "someone logged in to my account from another country",
        "I think my account was hacked", "please confirm whether there was a data breach",
        "an unknown device appears in my session list", "my password was changed without my knowledge",
        "I want to report a vulnerability in the {p}", "there is a phishing site copying your login page",
        "how is my data encrypted at rest", "please revoke all active sessions on my account",
    ],
    "integrations": [
        "the Slack integration stopped posting messages", "our Salesforce sync fails every night",
        "the webhook to our server returns errors", "the Zapier connection keeps disconnecting",
        "the API key for the integration is rejected", "Google Calendar events do not sync with the {p}",
        "the Shopify connector duplicates orders", "how do I connect the {p} to Microsoft Teams",
        "the OAuth flow for the integration fails", "the Jira integration does not create issues anymore",
    ],
}


SIBLINGS: dict[str, list[str]] = {
    "billing": ["refund", "cancellation"], "refund": ["billing", "shipping", "cancellation"],
    "account_access": ["security", "bug_report"], "bug_report": ["performance", "integrations"],
    "performance": ["bug_report"], "shipping": ["refund", "cancellation"],
    "cancellation": ["billing", "refund"], "feature_request": ["integrations", "bug_report"],
    "security": ["account_access"], "integrations": ["bug_report", "feature_request"],
}


SUBJECTS: dict[str, list[str]] = {
    "billing": ["Invoice question", "Double charge", "Billing problem", "Wrong amount"],
    "refund": ["Refund request", "Money back", "Refund not received", "Refund"],
    "account_access": ["Can't log in", "Locked out", "Password reset", "Login problem"],
    "bug_report": ["Bug", "Error in {p}", "Something is broken", "Crash"],
    "performance": ["Very slow", "Timeouts", "Slow {p}", "Performance issue"],
    "shipping": ["Where is my order", "Delivery problem", "Tracking", "Shipping"],
    "cancellation": ["Cancel subscription", "Cancellation", "Close account", "Stop renewal"],
    "feature_request": ["Feature request", "Suggestion", "Idea for {p}", "Would be nice"],
    "security": ["Security concern", "Hacked?", "Suspicious activity", "Phishing"],
    "integrations": ["Integration broken", "Sync issue", "Webhook errors", "Connector problem"],
}


GENERIC_SUBJECTS = ["Help", "Question", "Urgent", "Problem with my account", "Support needed", "Issue", "Hi"]


FILLER = [
    "I have been a customer for a few years", "this is quite urgent for our team", "please advise",
    "thanks in advance for your help", "I already contacted support last week", "let me know if you need more details",
    "this is affecting my whole team", "I hope you can sort this out quickly", "we are on the {tier} plan",
    "I tried again this morning", "my colleague has the same problem", "sorry for the long message",
]


GREETINGS = ["Hi", "Hello", "Hi team", "Dear support", "Good morning", "Hey"]


PRODUCTS = ["dashboard", "mobile app", "reports module", "web app", "admin console", "desktop app"]


DRIFT_PHRASES: dict[str, list[str]] = {
    "billing": ["the Copilot add-on consumed my AI credits {n} times", "token usage on the Copilot seat looks too high",
                "my AI credit balance dropped to zero overnight", "the Copilot seats were counted for inactive users"],
    "refund": ["I want the unused AI credits returned", "the Copilot seats I never activated should be credited back",
               "please give back the credits the Copilot burned on failed prompts"],
    "account_access": ["the Copilot sidebar asks me to authenticate again and again",
                       "my workspace admin role disappeared after enabling Copilot", "the Copilot workspace invite link is expired"],
    "bug_report": ["Copilot answers with made up numbers", "the assistant hallucinates columns that are not in my data",
                   "Copilot suggestions insert garbage into the formula", "the prompt box clears itself mid sentence"],
    "performance": ["Copilot takes a minute to answer a prompt", "the assistant stream stalls halfway through",
                    "generating a summary with Copilot is painfully sluggish"],
    "shipping": ["the hardware key for Copilot enterprise has not been dispatched",
                 "our onboarding kit for the Copilot rollout is still in transit"],
    "cancellation": ["remove the Copilot add-on from our plan", "turn off Copilot for the whole workspace and stop the seats",
                     "we are dropping the AI assistant tier"],
    "feature_request": ["let Copilot read our PDF manuals", "could the assistant draft replies in Spanish",
                        "allow us to pick the model Copilot uses"],
    "security": ["does Copilot send our prompts to a third party", "can the assistant see private documents it should not",
                 "we need a data retention policy for prompts"],
    "integrations": ["Copilot cannot read our Snowflake tables", "the assistant plugin for VS Code fails to connect",
                     "Copilot actions do not trigger our webhooks"],
}


DRIFT_FILLER = [
    "we rolled out Copilot to everyone last month", "the new AI assistant is central to our workflow now",
    "our prompts are fairly long and detailed", "the model seems different since the upgrade",
    "we pay for the enterprise Copilot tier", "I attached the prompt and the full response below",
]


BASE_MIX = np.array([0.14, 0.09, 0.12, 0.13, 0.07, 0.11, 0.09, 0.08, 0.07, 0.10])


DRIFT_MIX = np.array([0.18, 0.05, 0.05, 0.22, 0.14, 0.03, 0.06, 0.10, 0.09, 0.08])


TEAMS = {c: t for c, t in zip(CATEGORIES, [
    "Finance Ops", "Payments Desk", "Identity Team", "Core Engineering", "Platform SRE",
    "Logistics", "Retention", "Product Management", "Trust & Safety", "Partner Engineering",
])}


RESOLUTIONS = {
    "billing": "Corrected invoice sent", "refund": "Refund issued to original payment method",
    "account_access": "Account unlocked and password reset", "bug_report": "Bug filed with engineering",
    "performance": "Capacity increased, latency back to normal", "shipping": "Parcel traced with courier",
    "cancellation": "Subscription cancelled, no further charges", "feature_request": "Logged on product roadmap",
    "security": "Sessions revoked, security review done", "integrations": "Integration credentials re-issued",
}


FIRST = ["Dana", "Lee", "Sam", "Alex", "Maria", "Chen", "Priya", "Tom", "Fatima", "Jonas", "Aiko", "Luis"]


LAST = ["Smith", "Garcia", "Nguyen", "Müller", "Rossi", "Kowalski", "Okafor", "Silva", "Dubois", "Kim"]


COMPANIES = ["Acme Corp", "Globex", "Initech", "Umbrella Ltd", "Stark Industries", "Wayne Enterprises", "Hooli", "Vandelay"]


@dataclass(frozen=True)
class _Customer:
    id: str
    name: str
    company: str
    tier: str
    preferred: str | None


def _pick(rng: np.random.Generator, seq):
    """One element of a sequence (much faster than ``rng.choice`` on Python lists)."""
    return seq[int(rng.integers(len(seq)))]


def _fill(rng: np.random.Generator, s: str, tier: str) -> str:
    return s.format(
        p=_pick(rng, PRODUCTS), n=int(rng.integers(2, 99_999)), a=f"${rng.integers(5, 500)}.{rng.integers(0, 99):02d}",
        d=pd.Timestamp("2025-01-01").normalize().strftime("%B ") + str(int(rng.integers(1, 28))), tier=tier,
    )


def _body(rng: np.random.Generator, cat: str, cust: _Customer, drift: bool) -> str:
    n_content = int(rng.integers(1, 4)) + (1 if drift else 0)
    sentences = []
    for _ in range(n_content):
        u = rng.random()
        if drift and u < 0.55:
            pool = DRIFT_PHRASES[cat]
        elif u < (0.78 if not drift else 0.8):
            pool = PHRASES[cat]
        else:
            pool = PHRASES[_pick(rng, SIBLINGS[cat])]
        sentences.append(_fill(rng, _pick(rng, pool), cust.tier))
    n_filler = int(rng.integers(0, 3)) + (int(rng.integers(2, 5)) if drift else 0)
    for _ in range(n_filler):
        pool = DRIFT_FILLER + FILLER if drift else FILLER
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), _fill(rng, _pick(rng, pool), cust.tier))
    text = ". ".join(s[0].upper() + s[1:] for s in sentences) + "."
    return f"{_pick(rng, GREETINGS)},\n{text}\nRegards, {cust.name} ({cust.company})"


def _pii(rng: np.random.Generator, body: str, cust: _Customer) -> str:
    email = f"{cust.name.split()[0].lower()}.{cust.id[-4:]}@{cust.company.split()[0].lower()}.com"
    phone = f"+1 ({rng.integers(200, 999)}) {rng.integers(200, 999)}-{rng.integers(1000, 9999)}"
    extra = _pick(rng, [f"You can reach me at {email}.", f"Call me on {phone}.", f"Email {email} or phone {phone}."])
    return f"{body}\n{extra}"


def _html(rng: np.random.Generator, body: str) -> str:
    parts = body.split("\n")
    return "<div><p>" + "</p><p>".join(parts) + "</p>" + _pick(rng, ["<br/>", "&nbsp;<br>", "<hr/>"]) + "</div>"


def _near_dup(rng: np.random.Generator, body: str) -> str:
    edits = [lambda b: "Following up on this. " + b, lambda b: b.replace(".", "!", 1), lambda b: b + " Thanks again.",
             lambda b: b.replace("Hi", "Hello", 1), lambda b: b.lower()]
    return edits[int(rng.integers(0, len(edits)))](body)


def generate_tickets(cfg: GenerateConfig, drift: bool = False) -> pd.DataFrame:
    """Return ``cfg.n_rows`` tickets (deterministic for a given config and ``drift`` flag)."""
    rng = np.random.default_rng([cfg.seed, 1 if drift else 0])
    start = pd.Timestamp(cfg.start) + (pd.DateOffset(months=cfg.months + 2) if drift else pd.DateOffset(0))
    span_s = int(((start + pd.DateOffset(months=cfg.months)) - start).total_seconds())
    mix = DRIFT_MIX if drift else BASE_MIX
    mix = mix / mix.sum()

    customers = [
        _Customer(
            id=f"C{'D' if drift else ''}{i:06d}", name=f"{_pick(rng, FIRST)} {_pick(rng, LAST)}",
            company=str(_pick(rng, COMPANIES)), tier=str(rng.choice(["free", "pro", "enterprise"], p=[0.5, 0.35, 0.15])),
            preferred=str(rng.choice(CATEGORIES, p=mix)) if rng.random() < 0.4 else None,
        )
        for i in range(cfg.n_customers)
    ]
    # Zipf-like activity: a few customers file many tickets (repeat customers).
    weights = 1.0 / np.arange(1, cfg.n_customers + 1) ** 0.8
    cust_idx = rng.choice(cfg.n_customers, size=cfg.n_rows, p=weights / weights.sum())

    rows = []
    for i in range(cfg.n_rows):
        cust = customers[cust_idx[i]]
        cat = cust.preferred if cust.preferred and rng.random() < 0.5 else str(rng.choice(CATEGORIES, p=mix))
        body = _body(rng, cat, cust, drift)
        subj_pool = SUBJECTS[cat] if rng.random() < 0.6 else GENERIC_SUBJECTS
        if drift and rng.random() < 0.3:
            subj_pool = ["Copilot issue", "AI assistant", "Question about Copilot"]
        subject = _fill(rng, str(_pick(rng, subj_pool)), cust.tier)
        if rng.random() < cfg.pii_rate:
            body = _pii(rng, body, cust)
        if rng.random() < cfg.html_rate:
            body = _html(rng, body)
        created = start + pd.Timedelta(seconds=int(rng.integers(0, span_s)))
        label = cat if rng.random() >= cfg.label_noise else str(_pick(rng, [c for c in CATEGORIES if c != cat]))
        rows.append({
            "ticket_id": f"T{'D' if drift else ''}{i:07d}", "customer_id": cust.id, "created_at": created,
            "channel": str(rng.choice(["email", "web_form", "chat", "phone"], p=[0.45, 0.3, 0.2, 0.05])),
            "customer_tier": cust.tier, "subject": subject, "body": body, "category": label,
            "attachment_count": int(rng.poisson(0.4)),
            # Post-outcome columns: known only once the ticket was routed and solved (they follow the true topic).
            "resolved_by_team": TEAMS[cat] if rng.random() < 0.96 else str(rng.choice(list(TEAMS.values()))),
            "resolution_note": RESOLUTIONS[cat] + str(_pick(rng, ["", ".", " - closed", " (customer notified)"])),
            "resolved_at": created + pd.Timedelta(hours=float(rng.gamma(2.0, 12.0))),
        })
    # Plant duplicates: exact resubmissions and near-duplicate follow-ups a little later.
    n_exact, n_near = int(cfg.exact_duplicate_rate * cfg.n_rows), int(cfg.near_duplicate_rate * cfg.n_rows)
    src = rng.choice(cfg.n_rows, size=n_exact + n_near, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(cfg.n_rows), src), size=n_exact + n_near, replace=False)
    for k, (s, d) in enumerate(zip(src, dst)):
        created = rows[s]["created_at"] + pd.Timedelta(minutes=int(rng.integers(1, 60 * 24 * 3)))
        rows[d] = {
            **rows[s], "ticket_id": rows[d]["ticket_id"], "created_at": created,
            "resolved_at": created + pd.Timedelta(hours=float(rng.gamma(2.0, 12.0))),
        }
        if k >= n_exact:
            rows[d]["body"] = _near_dup(rng, rows[s]["body"])

    # Plant empty / whitespace-only bodies (half of them with no subject either).
    empty = rng.choice(cfg.n_rows, size=int(cfg.empty_body_rate * cfg.n_rows), replace=False)
    for j, e in enumerate(empty):
        rows[e]["body"] = ["", "   ", "\n\t "][j % 3]
        if j % 2 == 0:
            rows[e]["subject"] = ""

    df = pd.DataFrame(rows)
    df = df.sort_values("created_at", kind="stable").reset_index(drop=True)
    df["created_at"] = pd.to_datetime(df["created_at"]).astype("datetime64[ns]")
    df["resolved_at"] = pd.to_datetime(df["resolved_at"]).astype("datetime64[ns]")
    return df
