"""Library of the ``generate`` stage (its CLI is :mod:`pipelines.generate`).

Seeded generator of realistic support tickets: the embedded default data set.

Ten categories whose vocabulary overlaps on purpose (billing/refund,
access/security, bug/performance, ...), so a bag-of-words model is good but not
perfect. Customers write in their own words, as in real tickets: besides the fixed
PHRASES templates (whose key words each customer says their own way, :data:`SYNONYMS`),
many sentences only name what is wrong ("there is an issue with the reimbursement") in a
category-neutral frame, from a long tail of :data:`CONCEPTS`; a few are talked about all
year, the others come and go over the months (a new courier, a scam going round), so a
later ticket often uses words that were rare or absent in earlier ones. Customers also
differ in register (chatty, non-native, terse) and some make typos. A bag of n-grams
learns the templates and the frequent words; a pretrained encoder also knows the rare
ones. The generator also plants the defects the data gates must catch:

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

import bisect
import random
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

# --------------------------------------------------------------------------- how real customers write
# Real tickets name the same problem in their own words. Four layers vary the language of the topic
# sentences and subjects (never the triage cues, product names or order numbers planted beside them):
#
# * CONCEPTS: many tickets say only *what* is wrong ("there is an issue with the reimbursement") through a
#   category-neutral frame (FRAMES) and one of a long, Zipf-weighted tail of things a customer can name, so
#   much of a held-out ticket's evidence is a word seen a few times in training, or never;
# * SYNONYMS: the key words of the PHRASES templates in each customer's own vocabulary (a customer keeps
#   one preferred variant for a key word, others vary);
# * REGISTERS: plain, informal/chatty, non-native and terse customers;
# * typos: a share of customers misspell words (common misspellings and keyboard slips).

# Things a customer names, per category, most common first (drawn Zipf-like: a long tail of rare ones).
# fmt: off
CONCEPTS: dict[str, list[str]] = {
    "billing": [
        "my invoice", "the latest bill", "a double charge", "the monthly fee", "my credit card statement",
        "an overcharge", "the price increase", "the billing address on file", "the VAT on my invoice",
        "a surcharge nobody mentioned", "the direct debit", "the payment method on file",
        "an extra line item on my bill", "the proration after my upgrade", "the bank transfer I made",
        "my billing cycle", "the sales tax", "the amount you debited", "the pricing of my plan", "an unexpected fee",
        "the duplicate payment", "the invoice total", "the annual billing", "the card payment that bounced",
        "an unpaid balance", "the receipt for my purchase", "the overdue payment notice", "a currency conversion fee",
        "the cost of the extra seats", "the amount on my statement", "a late payment penalty",
        "the tax exemption certificate", "the instalment plan", "the charge after my trial", "the wire payment",
        "my outstanding balance", "the paperwork for our accountant", "the company billing details",
        "the payment reminder emails", "the quote versus what we paid", "the upgrade fee",
        "the authorisation hold on my card", "a pending transaction", "the price shown at checkout",
        "the invoicing portal", "the remittance details", "the billing contact for our company",
        "the discount code that was not applied", "the per-seat pricing", "the fee for paying by card",
        "the charge from last Tuesday", "the amount taken twice from my debit card", "the bill for seats we removed",
        "the price on the renewal email", "the fee for the add-on", "the invoice PDF", "the credit card surcharge",
        "the reverse charge VAT", "the billing history page", "a payment I did not authorise for the plan",
        "the rate we were quoted", "the cost breakdown", "the monthly statement", "the unpaid invoice reminder",
        "the company tax ID on the invoice", "the dollars vs euros on my bill", "the overage charges",
        "the usage-based pricing", "the prorated amount", "the billing period dates", "the payment schedule",
        "the finance department's questions about the invoice", "a duplicate invoice number",
        "the bill sent to the wrong person", "the transaction fee", "the currency on my invoice",
        "the expensive renewal", "the cost per user", "the annual invoice", "the charge labelled as miscellaneous",
        "the PayPal payment", "the invoice that has no company name", "the price tier", "the billing email address",
        "the payment confirmation", "the amount due", "the invoice numbering", "the bank charges", "the GST",
        "the price jump", "the invoice in the wrong language", "the minimum spend", "the billing frequency",
    ],
    "refund": [
        "my refund", "getting my money back", "the reimbursement", "the refund status", "a partial refund",
        "the money you owe me", "a chargeback", "the return of my payment", "the credit note you promised",
        "being reimbursed", "compensation for the outage", "the repayment to my card", "the refund amount",
        "a refund to my old card", "the refund for my returned item", "the refund for the unused months",
        "the restocking fee taken from my refund", "store credit instead of cash", "the refund confirmation email",
        "the money that has not come back", "a pro-rata refund", "reimbursing the delivery cost",
        "the goodwill gesture you mentioned", "the reversal of the payment", "the funds you said you would return",
        "recovering my money", "the money-back guarantee", "the returned payment to my bank",
        "the credit back to my account", "the cashback", "the refund deadline", "a refund for a faulty item",
        "getting reimbursed for the double payment", "the refund case I opened", "my claim for the money",
        "the refund that bounced back", "the payout for my return", "the reimbursement form",
        "the refund to a closed bank account", "being paid back", "the refund receipt",
        "the money back for the accessory", "a refund of the annual fee",
        "the voucher you offered instead of a refund", "the rebate", "the refund you approved",
        "my money for the cancelled order", "the reimbursement for the broken unit", "the refund to my PayPal",
        "the money-back request", "the refund that is taking weeks", "the refund to my bank",
        "getting the deposit back", "the refund after the return was received", "the refund of the delivery fee",
        "a refund for the outage days", "the refund reference", "the refund method", "the partial reimbursement",
        "compensation for the wasted month", "a refund for the duplicate charge", "the reimbursement of the fees",
        "the refund window", "the refund policy", "my refund eligibility", "the money you still have to send",
        "the repayment of the overpayment", "the returned funds", "the refund I was told was processed",
        "the credit card reversal", "a refund for the wrong size", "the reimbursement timeline",
        "the refund you denied", "getting compensated", "the refund for the upgrade I never used",
        "the money back for the gift", "the refund split across two cards", "reimbursement for the late delivery",
        "the rebate form", "the refund that arrived short", "the refund in my wallet",
    ],
    "account_access": [
        "logging in", "my password", "signing in", "the two factor code", "the authenticator app",
        "the password reset link", "my username", "the login screen", "being locked out", "account recovery",
        "the one-time passcode", "the magic link email", "my credentials", "the SSO redirect",
        "getting into my account", "the verification text", "the captcha on the sign-in page",
        "the security questions", "my recovery email", "the remember me option", "the session that keeps expiring",
        "the invite to join my team workspace", "the account activation email", "the backup codes",
        "the fingerprint login", "the face unlock", "my login on the new laptop", "the email change on my profile",
        "the access code", "my locked profile", "the sign-up confirmation", "the limit on login attempts",
        "switching between my two accounts", "the OTP", "the auth token that expires", "the login link",
        "the reset email landing in spam", "the passkey", "the account that says it is disabled",
        "my old email address on the login", "the sign-in with Google button", "the admin who removed my access",
        "the dormant account", "the identity check", "the login page rejecting me",
        "the authenticator after my phone reset", "the reset code", "my login email", "the sign in loop",
        "getting back into my profile", "the SMS code that never comes", "my expired password", "the account lockout",
        "signing in on my tablet", "the new device verification", "the login on the mobile app", "the password rules",
        "my forgotten username", "the sign-in page that reloads", "the access to our shared workspace",
        "logging in with my work email", "the login error code", "the account that shows as inactive",
        "the password that is not accepted", "the reset email that expired", "the identity verification step",
        "re-enabling my account", "the login session timeout", "the two step verification", "the security key",
        "the login with Microsoft", "the login with Apple", "the verification email link", "my profile access",
        "the account unlock request", "my old phone number on the account", "the recovery code",
        "the email confirmation loop", "the forgotten password flow",
    ],
    "bug_report": [
        "the export button", "a glitch on the {p}", "the error popup", "a crash when saving",
        "corrupted data in the table", "the broken layout", "a stack trace", "the white screen",
        "missing rows in the report", "the save function", "a regression since the update", "the dropdown menu",
        "the sorting", "a null value error", "the print preview", "the undo button", "the date picker",
        "wrong totals in the summary row", "duplicate entries appearing", "the file upload throwing an exception",
        "an endless redirect on the {p}", "attachments that will not open", "a blank page after clicking save",
        "text overlapping in the sidebar", "search returning wrong results", "graphs drawn incorrectly",
        "notifications showing twice", "the form validation", "numbers rounding wrong", "the pagination",
        "copy and paste not working", "images not rendering", "the scroll bar jumping around",
        "the checkbox that unticks itself", "emoji breaking the editor", "the autosave losing my work",
        "a crash report every time I open a file", "the import wizard failing halfway", "broken links in the menu",
        "the calendar showing the wrong week", "the spellchecker underlining everything", "the misaligned columns",
        "the comments that vanish", "a 404 page on the {p}", "the settings that do not stick", "the broken export",
        "the save button", "the error message on upload", "the crash on startup", "the glitchy editor",
        "the wrong dates in the list", "the table that will not load rows", "the filter that ignores my input",
        "the missing icons", "the broken search bar", "the form that submits twice", "the duplicate notifications",
        "a crash when I rotate my phone", "the layout on small screens", "the fields that reset", "the chart legend",
        "the CSV import", "the corrupted download", "the link that goes nowhere", "a frozen modal window",
        "the wrong currency symbol in reports", "the invisible text in dark theme",
        "the drag and drop that drops nothing", "the tooltip stuck on screen", "the preview that never loads",
        "the page that errors out", "the rich text formatting", "the sort order", "the broken thumbnails",
        "an exception in the logs", "the error code 0x80", "the totals that do not add up", "the timestamp bug",
        "the login button hidden behind a banner", "the glitch after the update", "the app closing by itself",
        "the mobile keyboard covering the field", "the unreadable font", "the broken print output",
    ],
    "performance": [
        "the loading times", "the lag", "how sluggish everything is", "the latency", "page load speed", "the timeouts",
        "the spinning wheel", "the response time", "delays when opening files", "the slowness since Monday",
        "CPU usage", "memory usage", "battery drain on my phone", "the choppy scrolling", "the long wait for reports",
        "the speed of search", "the API throughput", "requests hanging for ages", "the performance of the {p}",
        "the stuttering", "the delay before anything happens", "the bulk import speed", "the app being unresponsive",
        "the bandwidth it eats", "the overall speed", "the slow startup", "the backlog of queued jobs",
        "the rendering speed", "the lag when typing", "the page that takes a minute to open", "the load on our server",
        "upload speeds", "the high ping", "the jittery video", "the fan spinning up whenever the {p} is open",
        "the slow first load every morning", "the sluggish charts", "the gateway timeouts at peak hours",
        "the delay between clicking and seeing anything", "the heavy RAM footprint", "the slow export of big files",
        "the long wait on every save", "the slowdown after the last release", "the bottleneck in the query engine",
        "the sluggish {p}", "the lag on the {p}", "the slow reports", "the load time of the home page",
        "the wait times", "the slow sync of my files", "the freezing", "the latency spikes", "the performance drop",
        "the slow queries", "the slow API calls", "the long load on big projects", "the slow login", "the slow search",
        "the lag on mobile", "the bad performance on older laptops", "the delay on dashboards",
        "the long processing times", "the unresponsive buttons", "the slow response in the evening", "the heavy pages",
        "the time it takes to open anything", "the hourglass", "the loading bar", "the slow autocomplete",
        "the slow refresh", "the long wait after login", "the lag spikes", "the slow page transitions",
        "the batch jobs that take all night", "the slow preview", "the performance in Firefox",
        "the time to first byte", "the slow downloads", "the UI lag", "the delays in notifications",
    ],
    "shipping": [
        "my parcel", "the delivery", "the tracking link", "the courier", "the shipment", "the package",
        "the dispatch date", "the postage", "the delivery slot", "the consignment", "the carrier",
        "the shipping label", "the customs fees", "the delivery address", "a late delivery", "the lost package",
        "the parcel locker", "the estimated arrival date", "the signature on delivery", "the pickup point",
        "the express shipping", "the international delivery", "the freight charges", "the delivery driver",
        "the box that came crushed", "the wrong item in the box", "the missing item from my shipment",
        "the return to sender notice", "the warehouse", "the delivery note", "the neighbour who took my parcel",
        "the postman", "the tracking that has not updated", "the out for delivery status",
        "the replacement unit in transit", "the delivery window", "the courier who never rang the bell",
        "the depot holding my parcel", "the import duties", "the half-delivered shipment", "the packaging",
        "the redelivery", "the van that never came", "the dispatch confirmation", "my delivery",
        "the parcel that never came", "the package I am waiting for", "the courier tracking", "the late parcel",
        "the shipment that is stuck", "the delivery to my office", "the parcel left at the wrong door",
        "the missing delivery", "the package marked delivered", "the DHL tracking", "the UPS driver",
        "the FedEx shipment", "the Royal Mail delivery", "the DPD parcel", "the USPS tracking",
        "the delivery date that keeps moving", "the shipping time", "the dispatch delay",
        "the items still in the warehouse", "the order that has not shipped", "the delivery address typo",
        "the parcel at the post office", "the damaged box", "the tracking page", "the undelivered item",
        "the shipping confirmation", "the courier's missed delivery card", "the parcel in customs",
        "the package on my porch that is not mine", "the lost shipment", "the second half of my delivery",
        "the delivery instructions", "the postal service", "the overnight shipping", "the shipment to Canada",
    ],
    "cancellation": [
        "cancelling my subscription", "closing my account", "the auto-renewal", "ending my plan",
        "terminating the contract", "unsubscribing", "the notice period", "leaving your service", "my membership",
        "the cancellation fee", "the termination letter", "the cooling-off period", "discontinuing the service",
        "the end date of my plan", "downgrading to the free tier", "winding down our workspace",
        "opting out of the next renewal", "the cancel button", "deleting my account for good", "the exit survey",
        "pausing my subscription", "switching to another provider", "the minimum term of the contract",
        "the confirmation that I cancelled", "the trial I want to stop", "closing the team account",
        "the seats we no longer need", "the contract renewal date", "getting out of the annual plan",
        "ending the service at month end", "the retention offer", "stopping the recurring payment",
        "the unsubscribe link that does nothing", "closing our company account", "the rollover into another year",
        "the notice you need before we leave", "quitting the service", "not continuing after this month",
        "the early termination terms", "the plan I want gone", "the standing order for the subscription",
        "cancelling the plan", "cancelling before the renewal", "closing the account today",
        "the cancellation request", "ending the contract early", "the renewal I do not want",
        "getting out of the contract", "the subscription I am cancelling", "stopping the membership",
        "the cancellation confirmation email", "cancelling the add-on", "ending the free trial",
        "terminating our agreement", "the account closure", "leaving at the end of the term",
        "stopping all future payments", "the cancel option in settings", "the cancel link", "the plan cancellation",
        "the membership renewal", "the termination date", "ending service for our team",
        "cancelling for my mother's account", "not renewing next year", "the final month of the plan",
        "removing my card and leaving", "the notice to terminate", "the cancel flow", "closing my profile for good",
        "the auto renew setting", "the subscription end", "the downgrade and cancellation", "the contract exit",
    ],
    "feature_request": [
        "a dark mode", "an offline mode", "bulk editing", "keyboard shortcuts", "a calendar view", "custom fields",
        "more themes", "a kanban board", "recurring tasks", "an undo history", "PDF export", "a Gantt chart",
        "a public API", "better filtering", "a home screen widget", "reusable templates", "more languages",
        "guest access to reports", "scheduled exports", "custom branding", "tags on tasks", "a markdown editor",
        "voice input", "larger file uploads", "a read-only role", "granular notification settings", "nested folders",
        "drag and drop reordering", "a split-screen view", "emoji reactions", "time tracking",
        "a print-friendly layout", "a command palette", "saved searches", "right-to-left language support",
        "colour coding", "a high-contrast option", "a timeline view", "sub-tasks", "a pinned favourites bar",
        "custom report columns", "a weekly digest email", "multiple currencies", "an archive button",
        "inline image previews", "an automatic backup schedule", "an export to Excel", "a way to duplicate projects",
        "a batch delete option", "an API webhook for new tasks", "a better mobile layout", "dark theme support",
        "a bulk import tool", "a dashboard for managers", "custom user roles", "multi-select in lists",
        "a search within attachments", "a favourites list", "automatic reminders", "a way to merge records",
        "a shared inbox", "an activity feed", "more chart types", "a Linux version", "a tablet layout",
        "two-factor for guests", "offline sync", "a version history", "a better onboarding tour",
        "custom notification sounds", "a compact view", "an option to hide columns", "a daily summary", "an iPad app",
        "a public roadmap", "in-app chat", "a spell checker", "a way to lock records", "conditional formatting",
        "a landscape mode", "support for SVG files", "recurring invoices",
    ],
    "security": [
        "a suspicious email", "a phishing attempt", "an unknown login", "my hacked account", "a data breach",
        "a strange device in my sessions", "an unauthorised password change", "a vulnerability",
        "the encryption of my data", "active sessions I do not recognise", "a login from abroad", "a fake website",
        "malware in an attachment", "a compromised API token", "an impersonation scam", "a brute force attempt",
        "strange activity in the audit log", "identity theft", "someone accessing my files", "a leaked password",
        "my personal data request under GDPR", "an SMS scam", "a spoofed email using your logo",
        "a ransomware warning", "the SOC 2 report", "a security patch", "a stolen laptop that is still signed in",
        "an unexpected admin added to our team", "a cross-site scripting hole", "exposed personal data",
        "an unrecognised sign-in alert", "the penetration test findings", "a credential stuffing attack",
        "the privacy of my documents", "a scam call from someone claiming to be your staff",
        "a shared link leaking files", "the data processing agreement", "a keylogger warning from my antivirus",
        "the breach notification", "a possible account takeover", "an intrusion attempt",
        "the fraudulent messages sent from my account", "someone using my account", "a login I did not make",
        "the phishing email", "strange logins", "my data being exposed", "the security of my account",
        "a breach notice", "a suspicious text message", "a fake support call", "an unknown admin",
        "my files being shared without permission", "a password leak", "a suspicious link", "fraud on my account",
        "unknown devices", "the security alert email", "the encryption standard",
        "two factor being turned off by someone", "a hacker in our workspace", "an unauthorised API key",
        "strange emails sent in my name", "the session from an unknown IP", "a malicious file", "the security review",
        "a scam pretending to be you", "my account being hijacked", "spyware", "a virus warning",
        "an account takeover attempt", "the vulnerability report", "the bug bounty", "a privacy concern", "an exploit",
    ],
    "integrations": [
        "the Slack integration", "the Salesforce sync", "the webhook", "the Zapier connection", "the API key",
        "the Google Calendar sync", "the Shopify connector", "the Microsoft Teams app", "the OAuth flow",
        "the Jira integration", "the HubSpot connector", "the Dropbox link", "the Outlook plugin", "the REST endpoint",
        "the Trello power-up", "the GitHub app", "the Zendesk bridge", "the QuickBooks sync",
        "the Mailchimp connection", "the Asana integration", "the Airtable sync", "the iCal feed",
        "the third-party connector", "the Stripe webhook", "the Intercom plugin", "the SFTP feed",
        "the Power BI connector", "the Gmail add-on", "the Xero link", "the Twilio connector", "the Pipedrive sync",
        "the ServiceNow bridge", "the Segment pipeline", "the webhook signatures", "the Zoom integration",
        "the Confluence macro", "the WordPress plugin", "the Box connector", "the Okta provisioning",
        "the SharePoint sync", "the Discord bot", "the Freshdesk app", "the Make scenario", "the BigQuery export",
        "the Teams notifications", "the Slack app", "the Salesforce connector", "the Zapier zap",
        "the webhook endpoint", "the API token for the sync", "the Google Drive connector", "the Shopify app",
        "the Teams connector", "the Jira sync", "the calendar integration", "the CRM sync", "the HubSpot sync",
        "the Outlook sync", "the GitHub integration", "the Zendesk integration", "the Xero sync",
        "the QuickBooks connector", "the Mailchimp sync", "the Dropbox integration", "the Trello sync",
        "the import from Asana", "the export to Google Sheets", "the Excel add-in", "the API integration",
        "the Make integration", "the Notion sync", "the third-party app connection", "the webhook retries",
        "the sync with our ERP", "the SAP connector", "the Snowflake export", "the Azure AD sync",
        "the Gusto integration", "the Stripe connector", "the Typeform integration", "the Calendly link",
    ],
}
# fmt: on


# Category-neutral frames (sentence, issue) a concept is written in. Problems: every category but feature
# requests, which have their own frames; neutral ones: every category.
FRAMES_NEUTRAL = [
    ("quick question about {c}", "a question about {c}"),
    ("I am writing about {c}", "{c}"),
    ("can you explain {c}", "an explanation of {c}"),
    ("not sure who handles {c}", "who handles {c}"),
    ("following my last email about {c}", "a follow-up about {c}"),
    ("any update on {c}", "an update on {c}"),
    ("I would like to ask about {c}", "a question regarding {c}"),
]
FRAMES_PROBLEM = [
    ("I have a problem with {c}", "a problem with {c}"),
    ("something is wrong with {c}", "something wrong with {c}"),
    ("there is an issue with {c}", "an issue with {c}"),
    ("can someone look into {c}", "a request to look into {c}"),
    ("I need help with {c}", "help with {c}"),
    ("I am having trouble with {c}", "trouble with {c}"),
    ("what is going on with {c}", "what is going on with {c}"),
    ("still no luck with {c}", "ongoing trouble with {c}"),
    ("I am not happy about {c}", "dissatisfaction with {c}"),
    ("please check {c} for me", "a request to check {c}"),
    ("I do not get {c}", "confusion about {c}"),
    ("{c} is a mess", "{c} being a mess"),
    ("{c} has been a pain all week", "{c} being a pain all week"),
    ("I keep running into trouble with {c}", "recurring trouble with {c}"),
    ("there is a problem on my end with {c}", "a problem with {c}"),
    ("{c} again", "{c} once more"),
]
FRAMES_REQUEST = [
    ("it'd be great to have {c}", "a request for {c}"),
    ("any chance of getting {c}", "a request for {c}"),
    ("is {c} on the roadmap", "whether {c} is planned"),
    ("our team keeps asking for {c}", "a team request for {c}"),
    ("I really miss {c}", "a request for {c}"),
    ("please think about adding {c}", "a suggestion to add {c}"),
    ("do you plan to offer {c}", "plans for {c}"),
    ("we'd pay extra for {c}", "a request for {c}"),
    ("one thing I'd love is {c}", "a wish for {c}"),
    ("have you considered {c}", "a suggestion of {c}"),
]


# Key words of the PHRASES and SUBJECTS templates and the ways customers say them (the template's word first).
SYNONYMS: dict[str, list[str]] = {
    "charged": ["charged", "billed", "debited", "invoiced", "overcharged"],
    "invoice": ["invoice", "bill", "statement", "receipt"],
    "payment": ["payment", "transaction", "debit"],
    "subscription": ["subscription", "membership", "plan", "sub"],
    "fee": ["fee", "charge", "cost", "surcharge"],
    "refund": ["refund", "reimbursement", "repayment", "refund payment"],
    "money back": ["money back", "cash back", "money returned", "funds back"],
    "log in": ["log in", "sign in", "login", "get in", "log on"],
    "password": ["password", "passcode", "pw", "passphrase"],
    "locked": ["locked", "blocked", "frozen", "suspended", "disabled"],
    "crashes": ["crashes", "quits", "dies", "force closes", "blows up", "bombs out"],
    "error": ["error", "fault", "failure"],
    "broken": ["broken", "messed up", "garbled", "wrong"],
    "does nothing": ["does nothing", "is dead", "does not respond", "is unresponsive"],
    "slow": ["slow", "sluggish", "laggy", "crawling", "glacial", "snail-paced"],
    "forever": ["forever", "ages", "an eternity", "way too long"],
    "ages": ["ages", "forever", "an eternity", "way too long"],
    "timing out": ["timing out", "hanging", "stalling", "dropping out"],
    "freezes": ["freezes", "hangs", "locks up", "stalls"],
    "package": ["package", "parcel", "shipment", "box", "delivery"],
    "parcel": ["parcel", "package", "shipment", "consignment"],
    "arrived": ["arrived", "turned up", "shown up", "been delivered", "come"],
    "courier": ["courier", "delivery guy", "driver", "postman", "carrier"],
    "delivered": ["delivered", "dropped off", "handed over"],
    "tracking number": ["tracking number", "tracking code", "tracking link", "tracking ref"],
    "damaged": ["damaged", "crushed", "dented", "smashed", "torn open"],
    "cancel": ["cancel", "terminate", "end", "stop", "discontinue", "kill"],
    "renewal": ["renewal", "auto-renew", "rebilling", "auto-renewal"],
    "hacked": ["hacked", "compromised", "breached", "taken over", "broken into"],
    "suspicious": ["suspicious", "dodgy", "fishy", "shady", "weird looking"],
    "another country": ["another country", "abroad", "overseas", "a foreign country"],
    "sync": ["sync", "synchronise", "synch", "mirror"],
    "integration": ["integration", "connector", "plugin", "link", "bridge"],
    "stopped": ["stopped", "quit", "ceased"],
    "would be great": [
        "would be great",
        "would be awesome",
        "would be nice",
        "would really help",
        "would be a game changer",
    ],
    "please add": ["please add", "please build", "could you add", "pls add", "I'd love"],
    "suggest": ["suggest", "propose", "recommend"],
    "Refund request": ["Refund request", "Reimbursement request", "Request for my money"],
    "Can't log in": ["Can't log in", "Cannot sign in", "Can't get in", "Login not working"],
    "Very slow": ["Very slow", "So slow", "Super laggy", "Sluggish"],
    "Where is my order": ["Where is my order", "Where's my stuff", "Order not here yet", "Still waiting for my order"],
    "Cancel subscription": ["Cancel subscription", "End my membership", "Stop my plan", "Terminate subscription"],
    "Feature request": ["Feature request", "Feature idea", "Wishlist", "Enhancement request"],
    "Security concern": ["Security concern", "Security worry", "Possible breach", "Safety concern"],
    "Integration broken": ["Integration broken", "Connector broken", "Plugin not working", "Sync broken"],
    "Billing problem": ["Billing problem", "Billing issue", "Payment problem", "Issue with my bill"],
    "Bug": ["Bug", "Glitch", "Defect", "Bug found"],
}


# Customer registers: substitutions (matched case-insensitively on word boundaries), tried on each occurrence.
REGISTERS: dict[str, dict[str, list[str]]] = {
    "informal": {
        "I am": ["I'm", "im", "i'm"],
        "cannot": ["can't", "cant", "can not"],
        "do not": ["don't", "dont"],
        "does not": ["doesn't", "doesnt"],
        "did not": ["didn't", "didnt"],
        "is not": ["isn't", "isnt"],
        "please": ["pls", "plz", "please"],
        "you": ["u", "you", "ya"],
        "thanks": ["thx", "ty", "thanks"],
        "because": ["cuz", "bc"],
        "want to": ["wanna"],
        "going to": ["gonna"],
        "very": ["super", "really", "so"],
        "extremely": ["insanely", "crazy", "super"],
        "I would like": ["I'd like", "i want", "gimme"],
        "account": ["acct", "account"],
        "my": ["my", "ma"],
    },
    "nonnative": {
        "I cannot": ["I am not able to", "I not able to", "I am unable to"],
        "cannot": ["is not able to", "not able to"],
        "please": ["kindly", "please kindly", "pls"],
        "I would like": ["I want to request", "kindly I want", "I request"],
        "does not work": ["is not working"],
        "does not": ["is not"],
        "do not": ["not"],
        "the": ["the", ""],
        "yet": ["till now", "until now"],
        "still": ["till now still"],
    },
    "terse": {
        "I am": [""],
        "the": [""],
        "please": [""],
        "I think": [""],
        "my": [""],
    },
}
INFORMAL_TAGS = ["ugh", "ok so", "tbh", "honestly", "fyi", "btw", "seriously", "lol", "hey so", "sigh"]


# Common misspellings (besides random keyboard slips).
# fmt: off
MISSPELLINGS = {
    "receive": "recieve", "received": "recieved", "address": "adress", "account": "acount", "password": "pasword",
    "refund": "refund", "subscription": "subcription", "invoice": "invoce", "delivered": "deliverd",
    "suspicious": "suspicous", "integration": "intergration", "separate": "seperate", "definitely": "definately",
    "dashboard": "dashbaord", "cancel": "cancle", "cancelled": "canceled", "until": "untill", "already": "allready",
    "because": "becuase", "access": "acess", "payment": "paymnet", "which": "wich", "their": "thier",
    "business": "buisness", "calendar": "calender", "immediately": "immediatly", "tomorrow": "tommorow",
    "weird": "wierd", "occurred": "occured", "believe": "beleive",
}
# fmt: on


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
    register: str = "plain"  # plain | informal | nonnative | terse (REGISTERS)
    typo_rate: float = 0.0  # share of the longer words this customer misspells
    dialect: int = 0  # picks the customer's preferred variant of each key word (SYNONYMS)


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


# --------------------------------------------------------------------------- the customer's own words
REGISTER_MIX = {"plain": 0.5, "informal": 0.22, "nonnative": 0.16, "terse": 0.12}
TYPO_RATES = (0.0, 0.03, 0.08)  # most customers spell well, some do not
TYPO_RATE_P = (0.6, 0.3, 0.1)
EVERGREEN = 30  # the first concepts of each category are talked about all year; the rest come and go
TREND_PERIODS_PER_MONTH = 2  # how long a concept stays in vogue: half a month
TREND_SHARE = 0.35  # share of concept draws from the month's trending ones
CONCEPT_RATE = 0.55  # share of topic sentences that name a concept in a neutral frame instead of a PHRASES template
PREFERRED_VARIANT = 0.5  # how often a customer uses their own variant of a key word
OWN_MAIN = 0.93  # the main topic sentence is of the ticket's own category (else a sibling's: ambiguous tickets)
OWN_SUBJECT = 0.5  # a subject of the category (else a generic one)


def wording() -> list[str]:
    """Every text of the wording layer (concepts, frames, synonyms, register substitutions, typos): none may
    hold a priority cue, a product name or the drift period's new words (the tests check)."""
    return [
        *(c for v in CONCEPTS.values() for c in v),
        *(f for frames in (FRAMES_NEUTRAL, FRAMES_PROBLEM, FRAMES_REQUEST) for pair in frames for f in pair),
        *(w for k, v in SYNONYMS.items() for w in (k, *v)),
        *(w for subs in REGISTERS.values() for v in subs.values() for w in v),
        *INFORMAL_TAGS,
        *MISSPELLINGS.values(),
    ]


def _zipf(n: int, s: float) -> list[float]:
    """Cumulative Zipf-like weights of ``n`` ranked variants (exponent ``s``)."""
    w = np.cumsum(1.0 / np.arange(2, n + 2) ** s)
    return list(w / w[-1])


def _draw(r: random.Random, cum: list[float]) -> int:
    return min(bisect.bisect_right(cum, r.random()), len(cum) - 1)


_CONCEPT_CUM = {cat: _zipf(EVERGREEN, 0.7) for cat, v in CONCEPTS.items()}
_FRAMES = {cat: FRAMES_NEUTRAL + (FRAMES_REQUEST if cat == "feature_request" else FRAMES_PROBLEM) for cat in CONCEPTS}
_SYN_KEYS = {k.lower(): i for i, k in enumerate(SYNONYMS)}
_SYN_VARIANTS = {k.lower(): v for k, v in SYNONYMS.items()}
_SYN_CUM = {k.lower(): _zipf(len(v), 1.0) for k, v in SYNONYMS.items()}


def _alternation(keys) -> re.Pattern:
    """One pass over a text for many keys (longest first, word boundaries, any casing)."""
    alts = "|".join(re.escape(k) for k in sorted(keys, key=len, reverse=True))
    return re.compile(r"(?<![\w{])(?:" + alts + r")(?![\w}])", re.IGNORECASE)


_SYN_RE = _alternation(SYNONYMS)
_REGISTER_RE = {name: _alternation(subs) for name, subs in REGISTERS.items()}
_REGISTER_SUBS = {name: {k.lower(): v for k, v in subs.items()} for name, subs in REGISTERS.items()}
_MISSPELL_RE = _alternation(MISSPELLINGS)
_WORD_RE = re.compile(r"(?<![{\w'-])[a-z]{5,}(?![\w}'-])")
_KEYBOARD = "qwertyuiopasdfghjklzxcvbnm"
_NEVER_IN_BASE = ("copilot", "prompt", "hallucinat", "credits", "assistant")  # the drift period's new words


def _synonyms(r: random.Random, text: str, cust: _Customer) -> str:
    """The template's key words in this customer's vocabulary (their own variant or a Zipf draw)."""

    def sub(m: re.Match) -> str:
        key = m.group(0).lower()
        variants = _SYN_VARIANTS[key]
        if r.random() < PREFERRED_VARIANT:
            out = variants[(cust.dialect * 2654435761 + _SYN_KEYS[key] * 40503) % 2**31 % len(variants)]
        else:
            out = variants[_draw(r, _SYN_CUM[key])]
        return out if m.group(0)[0].islower() or not out else out[0].upper() + out[1:]

    return _SYN_RE.sub(sub, text)


def _slip(r: random.Random, w: str) -> str:
    """One keyboard slip: a swapped, dropped, doubled or mistyped letter."""
    i, kind = r.randrange(1, len(w) - 1), r.randrange(4)
    if kind == 0:
        return w[:i] + w[i + 1] + w[i] + w[i + 2 :]
    if kind == 1:
        return w[:i] + w[i + 1 :]
    if kind == 2:
        return w[:i] + w[i] + w[i:]
    return w[:i] + r.choice(_KEYBOARD) + w[i + 1 :]


def _style(r: random.Random, text: str, cust: _Customer) -> str:
    """A template in the customer's register, with their typos (slots such as {o} are left alone)."""
    if cust.register != "plain":
        subs = _REGISTER_SUBS[cust.register]
        text = _REGISTER_RE[cust.register].sub(
            lambda m: r.choice(subs[m.group(0).lower()]) if r.random() < 0.6 else m.group(0), text
        )
        text = re.sub(r"  +", " ", text).strip()
        if cust.register == "informal":
            if r.random() < 0.5:
                text = text.lower()
            if r.random() < 0.2:
                text = f"{r.choice(INFORMAL_TAGS)} {text}"
    if cust.typo_rate:
        rate = cust.typo_rate
        text = _MISSPELL_RE.sub(
            lambda m: MISSPELLINGS[m.group(0).lower()] if r.random() < 3 * rate else m.group(0), text
        )

        def slip(m: re.Match) -> str:
            if r.random() >= rate:
                return m.group(0)
            out = _slip(r, m.group(0))
            return m.group(0) if any(w in out for w in _NEVER_IN_BASE) else out

        text = _WORD_RE.sub(slip, text)
    return text or "help"


class _Words(random.Random):
    """The wording layer's random draws (fast scalar draws), and which concepts are in vogue this month."""

    trending: dict[str, list[int]] = {}


def _trends(rng: np.random.Generator, n: int) -> list[dict[str, list[int]]]:
    """For each of ``n`` periods, the concepts of each category that customers talk about then (new features,
    a new courier, a scam going round): a window over a seeded shuffle of the long tail, so a later
    period's vogue words were rare before it."""
    out: list[dict[str, list[int]]] = [{} for _ in range(n)]
    for cat, concepts in CONCEPTS.items():
        tail = EVERGREEN + rng.permutation(len(concepts) - EVERGREEN)
        width = max(1, len(tail) // n)
        for m in range(n):
            out[m][cat] = [int(i) for i in tail[m * width : (m + 1) * width]]
    return out


def _concept(r: _Words, cat: str) -> tuple[str, str]:
    """A concept of the category in a neutral frame: (sentence template, issue template). Evergreen
    concepts are drawn Zipf-like; a share of the draws is this month's trending ones."""
    trending = r.trending.get(cat)
    if trending and r.random() < TREND_SHARE:
        concept = CONCEPTS[cat][r.choice(trending)]
    else:
        concept = CONCEPTS[cat][_draw(r, _CONCEPT_CUM[cat])]
    frame, issue = r.choice(_FRAMES[cat])
    about = re.sub(r"\bmy\b", "their", concept)
    about = re.sub(r"\bI\b", "they", re.sub(r"\bme\b", "them", about))
    return frame.format(c=concept), issue.format(c=about)


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


def _topic(r: _Words, cat: str, cust: _Customer) -> tuple[str, str]:
    """One topic sentence of a category in the customer's words: (sentence template, issue template)."""
    if r.random() < CONCEPT_RATE:
        text, issue = _concept(r, cat)
    else:
        k = r.randrange(len(PHRASES[cat]))
        text, issue = _synonyms(r, PHRASES[cat][k], cust), ISSUES[cat][k]
    return _style(r, text, cust), issue


def _content(rng: np.random.Generator, r: _Words, cat: str, cust: _Customer, drift: bool) -> _Ticket:
    """The ticket's topic sentences, filler and subject (the first topic sentence is its main issue, nearly
    always of the ticket's own category), and whether it has an order number (drawn when a sentence first
    refers to the order, else at the end)."""
    n_content = int(rng.integers(1, 4)) + (1 if drift else 0)
    sentences, issue, order_mentioned = [], "", False
    candidate, has_order = str(int(rng.integers(100_000, 1_000_000))), None
    for j in range(n_content):
        u = rng.random()
        if drift and u < 0.55:
            k = int(rng.integers(len(DRIFT_PHRASES[cat])))
            text, issue_t = DRIFT_PHRASES[cat][k], DRIFT_ISSUES[cat][k]
        elif u < (0.8 if drift else OWN_MAIN if j == 0 else 0.78):
            text, issue_t = _topic(r, cat, cust)
        else:
            text, issue_t = _topic(r, _pick(rng, SIBLINGS[cat]), cust)
        vals = _values(rng, cust.tier)
        if "{o}" in text:
            has_order = rng.random() < ORDER_RATE_QUOTED if has_order is None else has_order
            vals["o"] = _order_text(rng, candidate if has_order else None)
            order_mentioned |= has_order
        sentences.append(text.format(**vals))
        issue = issue or issue_t.format(**vals)
    n_filler = int(rng.integers(0, 3)) + (int(rng.integers(2, 5)) if drift else 0)
    pool = DRIFT_FILLER + FILLER if drift else FILLER
    for _ in range(n_filler):
        filler = _pick(rng, pool)
        filler = filler if filler in DRIFT_FILLER else _style(r, filler, cust)
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), filler.format(tier=cust.tier))
    subj_pool = SUBJECTS[cat] if rng.random() < OWN_SUBJECT else GENERIC_SUBJECTS
    if drift and rng.random() < 0.3:
        subj_pool = DRIFT_SUBJECTS
    subject = str(_pick(rng, subj_pool))
    if subj_pool is not DRIFT_SUBJECTS:
        subject = _style(r, _synonyms(r, subject, cust), cust)
    subject = subject.format(p=_pick(rng, SURFACES))
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


def _ticket(rng: np.random.Generator, r: _Words, cat: str, cust: _Customer, drift: bool) -> dict:
    """Subject, body and triage truth of one ticket (before PII, HTML and the planted defects)."""
    t = _content(rng, r, cat, cust, drift)
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
            register=str(rng.choice(list(REGISTER_MIX), p=list(REGISTER_MIX.values()))),
            typo_rate=float(rng.choice(TYPO_RATES, p=TYPO_RATE_P)),
            dialect=int(rng.integers(2**30)),
        )
        for i in range(cfg.n_customers)
    ]
    # Zipf-like activity: a few customers file many tickets (repeat customers).
    weights = 1.0 / np.arange(1, cfg.n_customers + 1) ** 0.8
    words_rng = _Words(int(rng.integers(2**62)))
    n_trends = TREND_PERIODS_PER_MONTH * cfg.months
    trends = _trends(rng, n_trends)
    cust_idx = rng.choice(cfg.n_customers, size=cfg.n_rows, p=weights / weights.sum())

    rows = []
    for i in range(cfg.n_rows):
        cust = customers[cust_idx[i]]
        cat = cust.preferred if cust.preferred and rng.random() < 0.5 else str(rng.choice(CATEGORIES, p=mix))
        created = start + pd.Timedelta(seconds=int(rng.integers(0, span_s)))
        words_rng.trending = trends[min(int(n_trends * (created - start).total_seconds() / span_s), n_trends - 1)]
        ticket = _ticket(rng, words_rng, cat, cust, drift)
        if rng.random() < cfg.pii_rate:
            ticket["body"] = _pii(rng, ticket["body"], cust)
        if rng.random() < cfg.html_rate:
            ticket["body"] = _html(rng, ticket["body"])
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
