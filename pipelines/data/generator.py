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

Each ticket also carries the ground truth of structured triage (the generative model's
targets), every field planted in the subject or body so it can be graded from the text:

* ``priority`` (low | normal | high | urgent, about 15/55/20/10%): low, high and urgent
  tickets carry one of several cue phrasings (:data:`PRIORITY_CUES`) in the subject or the
  body; normal tickets carry none. Mildly tilted by topic, never a function of it;
* ``product`` (a name of :data:`PRODUCT_ALIASES`, or null): named by its name or an alias
  in varied casing ("Nimbus Drive", "nimbus drive", "the Drive app"); null when no product
  is named. *Nimbus Copilot* exists in the drift period only;
* ``order_id`` (``ORD-`` + six digits, or null): written as "order #482913", "ORD-482913",
  "order number 482 913", "my order 482913", ... (:data:`ORDER_FORMS`, all short of the
  eight digits ingest's phone scrubber needs); null tickets say "my order" or nothing;
* ``summary``: one sentence built from the ticket's main issue (:data:`ISSUES`, one per
  phrase), product, order and urgency, in varied wording.

None of them is derived from the category: alone, priority and product predict it near chance
(single-column macro-F1 about 0.05) and a missing order_id hardly depends on it. ``summary``
names the ticket's topic, so it predicts the category by design (about 0.77); the leakage stage
exempts all four as targets of another model (``leakage.target_columns``).

``drift=True`` produces a later period: another category mix, a new product
(*Nimbus Copilot*) with its own vocabulary, and longer texts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipelines.config import GENERATOR_LABELS, GenerateConfig

CATEGORIES = list(GENERATOR_LABELS)  # owned by config (its validate.expected_labels default)


PHRASES: dict[str, list[str]] = {
    "billing": [
        "I was charged {a} twice this month",
        "my invoice shows the wrong amount",
        "the payment for {o} was taken but the plan did not change",
        "why did my subscription price go up to {a}",
        "please update the billing address on my invoice",
        "the card on file was declined but I was still charged",
        "I need a VAT invoice for {d}",
        "the annual plan renewal charged me {a} instead of the discount price",
        "can you explain the extra fee on my statement",
        "the tax on my invoice looks wrong",
    ],
    "refund": [
        "I would like a refund for {o}",
        "please refund the {a} you charged by mistake",
        "I returned the item on {d} and still have no refund",
        "how long does a refund take to reach my card",
        "you promised a refund of {a} last week",
        "the refund was issued to an old card",
        "I want my money back for the unused months",
        "the partial refund was less than expected",
        "please reverse the charge and send the money back",
        "my refund status still says pending",
    ],
    "account_access": [
        "I cannot log in to my account",
        "the password reset email never arrives",
        "my account is locked after too many attempts",
        "I changed my phone and lost my two factor codes",
        "the login page says my username does not exist",
        "I need to change the email on my account",
        "single sign on stopped letting me in on {d}",
        "I am stuck in a login loop on the {p}",
        "please unlock my account so I can sign in",
        "the verification code is rejected every time",
    ],
    "bug_report": [
        "the {p} crashes when I click export",
        "I get an error 500 when saving a report",
        "the button on the {p} does nothing",
        "data in the {p} shows yesterday's numbers",
        "the app throws an exception after the update",
        "charts are blank since the last release",
        "the CSV export has broken columns",
        "dates are shown in the wrong timezone on the {p}",
        "the {p} shows an error message and closes",
        "filters reset every time I open the {p}",
    ],
    "performance": [
        "the {p} is extremely slow today",
        "pages take over {n} seconds to load",
        "the dashboard keeps timing out",
        "search results take forever to appear",
        "the {p} freezes for a minute before responding",
        "latency got much worse since {d}",
        "uploads are crawling even on a fast connection",
        "the API responds slowly under load",
        "reports take ages to generate now",
        "the {p} is lagging and the spinner never stops",
    ],
    "shipping": [
        "my package has not arrived yet",
        "the tracking number for {o} does not work",
        "the courier says the parcel was delivered but I have nothing",
        "my order shipped to the wrong address",
        "when will {o} be dispatched",
        "the box arrived damaged",
        "delivery was supposed to be on {d}",
        "can I change the delivery address for {o}",
        "the shipment is stuck in customs",
        "I received the wrong item in my package",
    ],
    "cancellation": [
        "please cancel my subscription",
        "I want to close my account at the end of the month",
        "how do I stop the automatic renewal",
        "cancel {o} before it ships",
        "I no longer need the service, please terminate it",
        "downgrade me and cancel the pro plan",
        "I tried to cancel online but the button fails",
        "do not renew my plan on {d}",
        "end my trial now so I am not charged",
        "I am switching providers so cancel everything",
    ],
    "feature_request": [
        "it would be great if the {p} had a dark mode",
        "please add an option to export to PDF",
        "can you support more languages in the {p}",
        "we would love bulk editing",
        "I suggest adding keyboard shortcuts",
        "please consider a calendar view for tasks",
        "a way to share reports with guests would help us",
        "could you add custom fields to the {p}",
        "we need scheduled exports",
        "please let us customise the email templates",
    ],
    "security": [
        "I received a suspicious email claiming to be from you",
        "someone logged in to my account from another country",
        "I think my account was hacked",
        "please confirm whether there was a data breach",
        "an unknown device appears in my session list",
        "my password was changed without my knowledge",
        "I want to report a vulnerability in the {p}",
        "there is a phishing site copying your login page",
        "how is my data encrypted at rest",
        "please revoke all active sessions on my account",
    ],
    "integrations": [
        "the Slack integration stopped posting messages",
        "our Salesforce sync fails every night",
        "the webhook to our server returns errors",
        "the Zapier connection keeps disconnecting",
        "the API key for the integration is rejected",
        "Google Calendar events do not sync with the {p}",
        "the Shopify connector duplicates orders",
        "how do I connect the {p} to Microsoft Teams",
        "the OAuth flow for the integration fails",
        "the Jira integration does not create issues anymore",
    ],
}


# The main issue of each phrase (same order as PHRASES / DRIFT_PHRASES), for the reference summary.
ISSUES: dict[str, list[str]] = {
    "billing": [
        "a double charge this month",
        "an invoice showing the wrong amount",
        "a payment taken without the plan changing",
        "an unexplained subscription price increase to {a}",
        "updating the billing address on an invoice",
        "a charge despite a declined card",
        "a VAT invoice for {d}",
        "an annual renewal charged without the discount",
        "an unexplained extra fee on the statement",
        "wrong tax on an invoice",
    ],
    "refund": [
        "a refund for an order",
        "a refund of {a} charged by mistake",
        "a missing refund for an item returned on {d}",
        "how long a refund takes to reach the card",
        "a promised refund of {a} that has not arrived",
        "a refund issued to an old card",
        "money back for unused months",
        "a partial refund smaller than expected",
        "reversing a charge",
        "a refund stuck in pending",
    ],
    "account_access": [
        "being unable to log in",
        "a password reset email that never arrives",
        "an account locked after too many attempts",
        "two factor codes lost with an old phone",
        "a username the login page does not recognise",
        "changing the email address of the account",
        "single sign on failing since {d}",
        "a login loop on the {p}",
        "unlocking the account",
        "a verification code that is always rejected",
    ],
    "bug_report": [
        "the {p} crashing on export",
        "an error 500 when saving a report",
        "a button on the {p} that does nothing",
        "stale numbers in the {p}",
        "an exception after the update",
        "blank charts since the last release",
        "broken columns in the CSV export",
        "wrong timezones on the {p}",
        "the {p} closing with an error message",
        "filters that reset in the {p}",
    ],
    "performance": [
        "the {p} being extremely slow",
        "pages taking over {n} seconds to load",
        "dashboard timeouts",
        "very slow search results",
        "the {p} freezing before it responds",
        "latency that got worse since {d}",
        "very slow uploads",
        "a slow API under load",
        "reports that take ages to generate",
        "the {p} lagging with an endless spinner",
    ],
    "shipping": [
        "a package that has not arrived",
        "a tracking number that does not work",
        "a parcel marked delivered but never received",
        "an order shipped to the wrong address",
        "when an order will be dispatched",
        "a box that arrived damaged",
        "a delivery due on {d}",
        "changing the delivery address of an order",
        "a shipment stuck in customs",
        "the wrong item in a package",
    ],
    "cancellation": [
        "cancelling the subscription",
        "closing the account at the end of the month",
        "stopping the automatic renewal",
        "cancelling an order before it ships",
        "terminating the service",
        "downgrading and cancelling the pro plan",
        "an online cancel button that fails",
        "not renewing the plan on {d}",
        "ending the trial before being charged",
        "cancelling everything to switch providers",
    ],
    "feature_request": [
        "a request for a dark mode in the {p}",
        "a request for PDF export",
        "a request for more languages in the {p}",
        "a request for bulk editing",
        "a request for keyboard shortcuts",
        "a request for a calendar view for tasks",
        "a request to share reports with guests",
        "a request for custom fields in the {p}",
        "a request for scheduled exports",
        "a request for customisable email templates",
    ],
    "security": [
        "a suspicious email claiming to be from support",
        "a login from another country",
        "a possibly hacked account",
        "whether there was a data breach",
        "an unknown device in the session list",
        "a password changed without the customer's knowledge",
        "a vulnerability in the {p}",
        "a phishing site copying the login page",
        "how data is encrypted at rest",
        "revoking all active sessions",
    ],
    "integrations": [
        "the Slack integration no longer posting",
        "a Salesforce sync failing every night",
        "webhook errors from the customer's server",
        "a Zapier connection that keeps dropping",
        "a rejected integration API key",
        "Google Calendar events not syncing with the {p}",
        "the Shopify connector duplicating orders",
        "connecting the {p} to Microsoft Teams",
        "a failing OAuth flow",
        "the Jira integration no longer creating issues",
    ],
}
SIBLINGS: dict[str, list[str]] = {
    "billing": ["refund", "cancellation"],
    "refund": ["billing", "shipping", "cancellation"],
    "account_access": ["security", "bug_report"],
    "bug_report": ["performance", "integrations"],
    "performance": ["bug_report"],
    "shipping": ["refund", "cancellation"],
    "cancellation": ["billing", "refund"],
    "feature_request": ["integrations", "bug_report"],
    "security": ["account_access"],
    "integrations": ["bug_report", "feature_request"],
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


GENERIC_SUBJECTS = ["Help", "Question", "Problem with my account", "Support needed", "Issue", "Hi"]


FILLER = [
    "I have been a customer for a few years",
    "please advise",
    "thanks in advance for your help",
    "I already contacted support last week",
    "let me know if you need more details",
    "we are on the {tier} plan",
    "I tried again this morning",
    "my colleague has the same problem",
    "sorry for the long message",
]


GREETINGS = ["Hi", "Hello", "Hi team", "Dear support", "Good morning", "Hey"]


# The parts of the product a ticket names ("the dashboard crashes"): not the product itself.
SURFACES = ["dashboard", "mobile app", "reports module", "web app", "admin console", "desktop app"]

DRIFT_PHRASES: dict[str, list[str]] = {
    "billing": [
        "the Copilot add-on consumed my AI credits {n} times",
        "token usage on the Copilot seat looks too high",
        "my AI credit balance dropped to zero overnight",
        "the Copilot seats were counted for inactive users",
    ],
    "refund": [
        "I want the unused AI credits returned",
        "the Copilot seats I never activated should be credited back",
        "please give back the credits the Copilot burned on failed prompts",
    ],
    "account_access": [
        "the Copilot sidebar asks me to authenticate again and again",
        "my workspace admin role disappeared after enabling Copilot",
        "the Copilot workspace invite link is expired",
    ],
    "bug_report": [
        "Copilot answers with made up numbers",
        "the assistant hallucinates columns that are not in my data",
        "Copilot suggestions insert garbage into the formula",
        "the prompt box clears itself mid sentence",
    ],
    "performance": [
        "Copilot takes a minute to answer a prompt",
        "the assistant stream stalls halfway through",
        "generating a summary with Copilot is painfully sluggish",
    ],
    "shipping": [
        "the hardware key for Copilot enterprise has not been dispatched",
        "our onboarding kit for the Copilot rollout is still in transit",
    ],
    "cancellation": [
        "remove the Copilot add-on from our plan",
        "turn off Copilot for the whole workspace and stop the seats",
        "we are dropping the AI assistant tier",
    ],
    "feature_request": [
        "let Copilot read our PDF manuals",
        "could the assistant draft replies in Spanish",
        "allow us to pick the model Copilot uses",
    ],
    "security": [
        "does Copilot send our prompts to a third party",
        "can the assistant see private documents it should not",
        "we need a data retention policy for prompts",
    ],
    "integrations": [
        "Copilot cannot read our Snowflake tables",
        "the assistant plugin for VS Code fails to connect",
        "Copilot actions do not trigger our webhooks",
    ],
}


DRIFT_SUBJECTS = ["Copilot issue", "AI assistant", "Question about Copilot"]


DRIFT_FILLER = [
    "we rolled out Copilot to everyone last month",
    "the new AI assistant is central to our workflow now",
    "our prompts are fairly long and detailed",
    "the model seems different since the upgrade",
    "we pay for the enterprise Copilot tier",
    "I attached the prompt and the full response below",
]


BASE_MIX = np.array([0.14, 0.09, 0.12, 0.13, 0.07, 0.11, 0.09, 0.08, 0.07, 0.10])


DRIFT_MIX = np.array([0.18, 0.05, 0.05, 0.22, 0.14, 0.03, 0.06, 0.10, 0.09, 0.08])


TEAMS = {
    c: t
    for c, t in zip(
        CATEGORIES,
        [
            "Finance Ops",
            "Payments Desk",
            "Identity Team",
            "Core Engineering",
            "Platform SRE",
            "Logistics",
            "Retention",
            "Product Management",
            "Trust & Safety",
            "Partner Engineering",
        ],
    )
}


RESOLUTIONS = {
    "billing": "Corrected invoice sent",
    "refund": "Refund issued to original payment method",
    "account_access": "Account unlocked and password reset",
    "bug_report": "Bug filed with engineering",
    "performance": "Capacity increased, latency back to normal",
    "shipping": "Parcel traced with courier",
    "cancellation": "Subscription cancelled, no further charges",
    "feature_request": "Logged on product roadmap",
    "security": "Sessions revoked, security review done",
    "integrations": "Integration credentials re-issued",
}


DRIFT_ISSUES: dict[str, list[str]] = {
    "billing": [
        "Copilot using up AI credits {n} times",
        "high token usage on a Copilot seat",
        "an AI credit balance that dropped to zero",
        "Copilot seats billed for inactive users",
    ],
    "refund": [
        "returning unused AI credits",
        "credit for Copilot seats never activated",
        "credits burned by Copilot on failed prompts",
    ],
    "account_access": [
        "repeated sign-in prompts in the Copilot sidebar",
        "an admin role lost after enabling Copilot",
        "an expired Copilot workspace invite",
    ],
    "bug_report": [
        "Copilot answering with made up numbers",
        "the assistant inventing columns",
        "Copilot inserting garbage into formulas",
        "a prompt box that clears itself",
    ],
    "performance": ["slow Copilot answers", "an assistant stream that stalls", "sluggish Copilot summaries"],
    "shipping": ["an undispatched Copilot enterprise hardware key", "a Copilot onboarding kit still in transit"],
    "cancellation": [
        "removing the Copilot add-on",
        "turning off Copilot for the whole workspace",
        "dropping the AI assistant tier",
    ],
    "feature_request": [
        "a request for Copilot to read PDF manuals",
        "a request for replies drafted in Spanish",
        "a request to choose the model Copilot uses",
    ],
    "security": [
        "whether Copilot sends prompts to a third party",
        "the assistant seeing private documents",
        "a data retention policy for prompts",
    ],
    "integrations": [
        "Copilot failing to read Snowflake tables",
        "an assistant plugin for VS Code that cannot connect",
        "Copilot actions not triggering webhooks",
    ],
}


FIRST = ["Dana", "Lee", "Sam", "Alex", "Maria", "Chen", "Priya", "Tom", "Fatima", "Jonas", "Aiko", "Luis"]


LAST = ["Smith", "Garcia", "Nguyen", "Müller", "Rossi", "Kowalski", "Okafor", "Silva", "Dubois", "Kim"]


COMPANIES = [
    "Acme Corp",
    "Globex",
    "Initech",
    "Umbrella Ltd",
    "Stark Industries",
    "Wayne Enterprises",
    "Hooli",
    "Vandelay",
]


# --------------------------------------------------------------------------- triage ground truth
PRIORITIES = ("low", "normal", "high", "urgent")


PRIORITY_MIX = np.array([0.15, 0.55, 0.20, 0.10])


# Mild, realistic tilts (a break-in is more often urgent, a feature idea rarely): priority stays a weak
# predictor of the category (leakage single-column macro-F1 near chance).
PRIORITY_TILT = {
    "security": [0.8, 0.9, 1.2, 1.8],
    "account_access": [0.8, 1.0, 1.1, 1.4],
    "performance": [0.8, 1.0, 1.2, 1.2],
    "feature_request": [2.0, 1.0, 0.7, 0.3],
}


# Cue phrasings per level: body sentences, and subject templates ({s}: the subject). No cue of one level
# contains a cue of another ("this is not urgent at all" is low and holds no urgent cue), and no other
# text of the generator contains any cue (tests/pipelines/data/test_triage_truth.py checks both).
PRIORITY_CUES: dict[str, dict[str, list[str]]] = {
    "low": {
        "body": [
            "no rush on this",
            "whenever you get a chance",
            "this is not urgent at all",
            "low priority, just curious",
            "it can wait a while",
            "just a minor thing",
            "no hurry",
        ],
        "subject": ["Low priority: {s}", "{s} (not urgent)", "{s} - no rush", "Minor: {s}"],
    },
    "normal": {"body": [], "subject": []},
    "high": {
        "body": [
            "this is quite urgent for our team",
            "this is affecting my whole team",
            "I hope you can sort this out quickly",
            "please prioritise this",
            "we need this resolved in the next few days",
            "this is becoming a real problem for us",
            "I would appreciate a quick reply",
        ],
        "subject": ["Important: {s}", "{s} (high priority)", "High priority - {s}", "{s} - please prioritise"],
    },
    "urgent": {
        "body": [
            "this is urgent",
            "we need this fixed immediately",
            "our whole team is blocked right now",
            "this is critical for our business",
            "please treat this as an emergency",
            "we are losing money every hour this goes on",
            "I need an answer asap",
            "everything is on hold until this is solved",
        ],
        "subject": ["URGENT: {s}", "{s} - URGENT", "Critical: {s}", "[ASAP] {s}", "Emergency - {s}"],
    },
}


# Every product and the ways a ticket names it (matched case-insensitively on word boundaries).
PRODUCT_ALIASES: dict[str, tuple[str, ...]] = {
    "Nimbus Drive": ("Nimbus Drive", "nimbus drive", "NimbusDrive", "the Drive app"),
    "Nimbus Mail": ("Nimbus Mail", "nimbus mail", "NimbusMail", "the Mail client"),
    "Nimbus Analytics": ("Nimbus Analytics", "nimbus analytics", "Nimbus BI", "the Analytics suite"),
    "Nimbus Hub": ("Nimbus Hub", "NIMBUS HUB", "the Hub router", "our Hub device"),
    "Nimbus Notes": ("Nimbus Notes", "nimbus notes", "NimbusNotes", "the Notes app"),
    # the drift period's new product; its phrases above name it "Copilot", "the assistant", "AI assistant"
    "Nimbus Copilot": ("Nimbus Copilot", "nimbus copilot", "Copilot", "the assistant", "AI assistant"),
}


DRIFT_PRODUCT = "Nimbus Copilot"


BASE_PRODUCTS = [p for p in PRODUCT_ALIASES if p != DRIFT_PRODUCT]


BASE_PRODUCT_P = np.array([0.30, 0.20, 0.20, 0.15, 0.15])


PRODUCT_RATE = 0.6  # share of tickets that name a product (the others: product null)


_PRODUCT_RE = {
    name: re.compile(r"(?<!\w)(?:" + "|".join(re.escape(a) for a in aliases) + r")(?!\w)", re.IGNORECASE)
    for name, aliases in PRODUCT_ALIASES.items()
}


def products_named(text: str) -> set[str]:
    """The products a text names (by name or alias, any casing)."""
    return {name for name, rx in _PRODUCT_RE.items() if rx.search(text)}


PRODUCT_MENTIONS = [
    "this is about {x}",
    "I am using {x}",
    "it happens in {x}",
    "we rely on {x} every day",
    "product: {x}",
    "writing about {x}",
    "we use {x} on the {tier} plan",
]


PRODUCT_SUBJECTS = ["{x}: {s}", "{s} - {x}", "{s} ({x})", "[{x}] {s}"]


# An order number (six digits: ingest's phone pattern needs at least eight) written several ways.
ORDER_FORMS = ["order #{d}", "ORD-{d}", "order number {d3} {d3b}", "my order {d}", "order {d}", "order ID {d}"]


ORDER_MENTIONS = ["this is about {o}", "regarding {o}", "quoting {o}", "it concerns {o}", "this relates to {o}"]


ORDER_SUBJECTS = ["{s} - {o}", "{s} ({o})", "{o}: {s}"]


# Tickets whose order has no number say one of these where a number would go.
NO_ORDER = ["my order", "the order"]


# How often a ticket has an order number: usually when a topic sentence refers to its order ("a refund for
# order #482913"), less often otherwise. Whether order_id is missing stays nearly independent of the
# category (Cramér's V about 0.15; leakage's missingness limit is 0.3).
ORDER_RATE_QUOTED = 0.8
ORDER_RATE = 0.33


SUMMARY_FRAMES = [
    "The customer writes about {issue}{rest}.",
    "Ticket about {issue}{rest}.",
    "The customer contacts support about {issue}{rest}.",
    "A {tier} plan customer writes about {issue}{rest}.",
    "Customer message regarding {issue}{rest}.",
    "Support request concerning {issue}{rest}.",
]


SUMMARY_PRODUCT = [" in {x}", " with {x}", " ({x})", " on {x}"]


SUMMARY_ORDER = [" for order {o}", " (order {o})", ", order {o}"]


SUMMARY_URGENCY = {
    "low": [", low priority", ", no rush"],
    "high": [", high priority", " and asks for a quick fix"],
    "urgent": [", marked urgent", " and needs an urgent fix", ", urgent"],
}


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


def _values(rng: np.random.Generator, tier: str) -> dict[str, str]:
    """The slot values of one phrase and its issue (a surface, a count, an amount, a date)."""
    return {
        "p": _pick(rng, SURFACES),
        "n": str(int(rng.integers(2, 99_999))),
        "a": f"${rng.integers(5, 500)}.{rng.integers(0, 99):02d}",
        "d": f"January {int(rng.integers(1, 28))}",
        "tier": tier,
    }


def _order_text(rng: np.random.Generator, digits: str | None) -> str:
    """How this mention writes the ticket's order: one of ORDER_FORMS, or "my order" when there is none."""
    if digits is None:
        return _pick(rng, NO_ORDER)
    return _pick(rng, ORDER_FORMS).format(d=digits, d3=digits[:3], d3b=digits[3:])


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


@dataclass
class _Ticket:
    """One ticket being written: its sentences and subject, the truth, and where each cue went."""

    sentences: list[str]
    subject: str
    issue: str
    digits: str | None  # the order number, if the ticket has one
    order_mentioned: bool
    priority: str = "normal"
    product: str | None = None
    priority_in_subject: bool = False
    order_in_subject: bool = False

    def insert(self, rng: np.random.Generator, sentence: str) -> None:
        self.sentences.insert(int(rng.integers(0, len(self.sentences) + 1)), sentence)


def _content(rng: np.random.Generator, cat: str, cust: _Customer, drift: bool) -> _Ticket:
    """The ticket's topic sentences, filler and subject (the first topic sentence is its main issue), and
    whether it has an order number (drawn when a sentence first refers to the order, else at the end)."""
    n_content = int(rng.integers(1, 4)) + (1 if drift else 0)
    sentences, issue, order_mentioned = [], "", False
    candidate, has_order = str(int(rng.integers(100_000, 1_000_000))), None
    for _ in range(n_content):
        u = rng.random()
        if drift and u < 0.55:
            pools = (DRIFT_PHRASES[cat], DRIFT_ISSUES[cat])
        elif u < (0.78 if not drift else 0.8):
            pools = (PHRASES[cat], ISSUES[cat])
        else:
            sib = _pick(rng, SIBLINGS[cat])
            pools = (PHRASES[sib], ISSUES[sib])
        k = int(rng.integers(len(pools[0])))
        vals = _values(rng, cust.tier)
        if "{o}" in pools[0][k]:
            has_order = rng.random() < ORDER_RATE_QUOTED if has_order is None else has_order
            vals["o"] = _order_text(rng, candidate if has_order else None)
            order_mentioned |= has_order
        sentences.append(pools[0][k].format(**vals))
        issue = issue or pools[1][k].format(**vals)
    n_filler = int(rng.integers(0, 3)) + (int(rng.integers(2, 5)) if drift else 0)
    pool = DRIFT_FILLER + FILLER if drift else FILLER
    for _ in range(n_filler):
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), _pick(rng, pool).format(tier=cust.tier))
    subj_pool = SUBJECTS[cat] if rng.random() < 0.6 else GENERIC_SUBJECTS
    if drift and rng.random() < 0.3:
        subj_pool = DRIFT_SUBJECTS
    subject = str(_pick(rng, subj_pool)).format(p=_pick(rng, SURFACES))
    has_order = rng.random() < ORDER_RATE if has_order is None else has_order
    return _Ticket(sentences, subject, issue, candidate if has_order else None, order_mentioned)


def _plant_product(rng: np.random.Generator, t: _Ticket, cust: _Customer, drift: bool) -> None:
    """Name a product (or none). In the drift period a ticket that already speaks of Copilot is about it."""
    if drift and DRIFT_PRODUCT in products_named(" ".join([t.subject, *t.sentences])):
        t.product = DRIFT_PRODUCT
        if rng.random() < 0.3:
            t.insert(
                rng,
                _pick(rng, PRODUCT_MENTIONS).format(x=_pick(rng, PRODUCT_ALIASES[DRIFT_PRODUCT][:2]), tier=cust.tier),
            )
        return
    if rng.random() >= PRODUCT_RATE:
        return
    t.product = str(BASE_PRODUCTS[int(rng.choice(len(BASE_PRODUCTS), p=BASE_PRODUCT_P))])
    alias = _pick(rng, PRODUCT_ALIASES[t.product])
    if rng.random() < 0.25:
        t.subject = _pick(rng, PRODUCT_SUBJECTS).format(x=alias, s=t.subject)
    else:
        t.insert(rng, _pick(rng, PRODUCT_MENTIONS).format(x=alias, tier=cust.tier))


def _plant_priority(rng: np.random.Generator, t: _Ticket, cat: str) -> None:
    """Draw the priority; low/high/urgent get a cue in the subject, the body or (urgent, sometimes) both."""
    p = PRIORITY_MIX * np.array(PRIORITY_TILT.get(cat, [1.0] * 4))
    t.priority = PRIORITIES[int(rng.choice(4, p=p / p.sum()))]
    if t.priority == "normal":
        return
    cues = PRIORITY_CUES[t.priority]
    u = rng.random()
    if u < 0.35 or (t.priority == "urgent" and u > 0.75):
        t.subject = _pick(rng, cues["subject"]).format(s=t.subject)
        t.priority_in_subject = True
    if u >= 0.35:
        t.insert(rng, _pick(rng, cues["body"]))


def _plant_order(rng: np.random.Generator, t: _Ticket) -> None:
    """An order number no topic sentence wrote goes in a sentence or the subject (sometimes both)."""
    digits = t.digits
    if digits is None:
        return
    u = rng.random()
    if u < 0.25 or (t.order_mentioned and u > 0.85):
        t.subject = _pick(rng, ORDER_SUBJECTS).format(s=t.subject, o=_order_text(rng, digits))
        t.order_in_subject = True
    elif not t.order_mentioned:
        t.insert(rng, _pick(rng, ORDER_MENTIONS).format(o=_order_text(rng, digits)))


def _summary(rng: np.random.Generator, t: _Ticket, order_id: str | None, tier: str) -> str:
    """One sentence: the main issue, the product, sometimes the order and the urgency."""
    rest = ""
    if t.product and not (t.product == DRIFT_PRODUCT and products_named(t.issue)):
        rest += _pick(rng, SUMMARY_PRODUCT).format(x=t.product)
    if order_id and rng.random() < 0.5:
        rest += _pick(rng, SUMMARY_ORDER).format(o=order_id)
    if t.priority != "normal" and rng.random() < 0.6:
        rest += _pick(rng, SUMMARY_URGENCY[t.priority])
    return _cap(_pick(rng, SUMMARY_FRAMES).format(issue=t.issue, rest=rest, tier=tier))


def _ticket(rng: np.random.Generator, cat: str, cust: _Customer, drift: bool) -> dict:
    """Subject, body and triage truth of one ticket (before PII, HTML and the planted defects)."""
    t = _content(rng, cat, cust, drift)
    _plant_product(rng, t, cust, drift)
    _plant_priority(rng, t, cat)
    _plant_order(rng, t)
    order_id = f"ORD-{t.digits}" if t.digits else None
    text = ". ".join(_cap(s) for s in t.sentences) + "."
    return {
        "subject": _cap(t.subject),
        "body": f"{_pick(rng, GREETINGS)},\n{text}\nRegards, {cust.name} ({cust.company})",
        "priority": t.priority,
        "product": t.product,
        "order_id": order_id,
        "summary": _summary(rng, t, order_id, cust.tier),
        "_priority_in_subject": t.priority_in_subject,
        "_order_in_subject": t.order_in_subject,
    }


def _subject_only_truth(row: dict) -> dict:
    """Triage truth of a ticket whose body was emptied: only what its subject still says."""
    subject = row["subject"]
    if not subject:
        return {"priority": "normal", "product": None, "order_id": None, "summary": "The ticket is empty."}
    product = next(iter(products_named(subject)), None)
    about = f", about {product}" if product else ""
    return {
        "priority": row["priority"] if row["_priority_in_subject"] else "normal",
        "product": product,
        "order_id": row["order_id"] if row["_order_in_subject"] else None,
        "summary": f'The ticket has an empty body and the subject "{subject}"{about}.',
    }


def _pii(rng: np.random.Generator, body: str, cust: _Customer) -> str:
    email = f"{cust.name.split()[0].lower()}.{cust.id[-4:]}@{cust.company.split()[0].lower()}.com"
    phone = f"+1 ({rng.integers(200, 999)}) {rng.integers(200, 999)}-{rng.integers(1000, 9999)}"
    extra = _pick(rng, [f"You can reach me at {email}.", f"Call me on {phone}.", f"Email {email} or phone {phone}."])
    return f"{body}\n{extra}"


def _html(rng: np.random.Generator, body: str) -> str:
    parts = body.split("\n")
    return "<div><p>" + "</p><p>".join(parts) + "</p>" + _pick(rng, ["<br/>", "&nbsp;<br>", "<hr/>"]) + "</div>"


def _near_dup(rng: np.random.Generator, body: str) -> str:
    edits = [
        lambda b: "Following up on this. " + b,
        lambda b: b.replace(".", "!", 1),
        lambda b: b + " Thanks again.",
        lambda b: b.replace("Hi", "Hello", 1),
        lambda b: b.lower(),
    ]
    return edits[int(rng.integers(0, len(edits)))](body)


TRIAGE_COLUMNS = ("priority", "product", "order_id", "summary")


def generate_tickets(cfg: GenerateConfig, drift: bool = False) -> pd.DataFrame:
    """Return ``cfg.n_rows`` tickets (deterministic for a given config and ``drift`` flag)."""
    rng = np.random.default_rng([cfg.seed, 1 if drift else 0])
    start = pd.Timestamp(cfg.start) + (pd.DateOffset(months=cfg.months + 2) if drift else pd.DateOffset(0))
    span_s = int(((start + pd.DateOffset(months=cfg.months)) - start).total_seconds())
    mix = DRIFT_MIX if drift else BASE_MIX
    mix = mix / mix.sum()

    customers = [
        _Customer(
            id=f"C{'D' if drift else ''}{i:06d}",
            name=f"{_pick(rng, FIRST)} {_pick(rng, LAST)}",
            company=str(_pick(rng, COMPANIES)),
            tier=str(rng.choice(["free", "pro", "enterprise"], p=[0.5, 0.35, 0.15])),
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
        ticket = _ticket(rng, cat, cust, drift)
        if rng.random() < cfg.pii_rate:
            ticket["body"] = _pii(rng, ticket["body"], cust)
        if rng.random() < cfg.html_rate:
            ticket["body"] = _html(rng, ticket["body"])
        created = start + pd.Timedelta(seconds=int(rng.integers(0, span_s)))
        label = cat if rng.random() >= cfg.label_noise else str(_pick(rng, [c for c in CATEGORIES if c != cat]))
        rows.append(
            {
                "ticket_id": f"T{'D' if drift else ''}{i:07d}",
                "customer_id": cust.id,
                "created_at": created,
                "channel": str(rng.choice(["email", "web_form", "chat", "phone"], p=[0.45, 0.3, 0.2, 0.05])),
                "customer_tier": cust.tier,
                "subject": ticket.pop("subject"),
                "body": ticket.pop("body"),
                "category": label,
                "attachment_count": int(rng.poisson(0.4)),
                # Post-outcome columns: known only once the ticket was routed and solved (they follow the true topic).
                "resolved_by_team": TEAMS[cat] if rng.random() < 0.96 else str(rng.choice(list(TEAMS.values()))),
                "resolution_note": RESOLUTIONS[cat] + str(_pick(rng, ["", ".", " - closed", " (customer notified)"])),
                "resolved_at": created + pd.Timedelta(hours=float(rng.gamma(2.0, 12.0))),
                **ticket,  # triage truth (priority, product, order_id, summary) and where its cues went
            }
        )
    # Plant duplicates: exact resubmissions and near-duplicate follow-ups a little later (same triage truth).
    n_exact, n_near = int(cfg.exact_duplicate_rate * cfg.n_rows), int(cfg.near_duplicate_rate * cfg.n_rows)
    src = rng.choice(cfg.n_rows, size=n_exact + n_near, replace=False)
    dst = rng.choice(np.setdiff1d(np.arange(cfg.n_rows), src), size=n_exact + n_near, replace=False)
    for k, (s, d) in enumerate(zip(src, dst)):
        created = rows[s]["created_at"] + pd.Timedelta(minutes=int(rng.integers(1, 60 * 24 * 3)))
        rows[d] = {
            **rows[s],
            "ticket_id": rows[d]["ticket_id"],
            "created_at": created,
            "resolved_at": created + pd.Timedelta(hours=float(rng.gamma(2.0, 12.0))),
        }
        if k >= n_exact:
            rows[d]["body"] = _near_dup(rng, rows[s]["body"])

    # Plant empty / whitespace-only bodies (half of them with no subject either); the truth keeps what is left.
    empty = rng.choice(cfg.n_rows, size=int(cfg.empty_body_rate * cfg.n_rows), replace=False)
    for j, e in enumerate(empty):
        rows[e]["body"] = ["", "   ", "\n\t "][j % 3]
        if j % 2 == 0:
            rows[e]["subject"] = ""
        rows[e].update(_subject_only_truth(rows[e]))

    df = pd.DataFrame(rows).drop(columns=["_priority_in_subject", "_order_in_subject"])
    df = df.sort_values("created_at", kind="stable").reset_index(drop=True)
    df["created_at"] = pd.to_datetime(df["created_at"]).astype("datetime64[ns]")
    df["resolved_at"] = pd.to_datetime(df["resolved_at"]).astype("datetime64[ns]")
    return df
