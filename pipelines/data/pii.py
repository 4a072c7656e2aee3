"""PII scrubbing: :func:`scrub_pii`, the one scrubber of ingest, quarantine, snapshots, the chat data and serving.

Presidio finds the values and replaces them (:mod:`pipelines.data.pii_presidio` wraps it, imported on the first
scrub: its import takes seconds, which a stage that only reads or refuses its input does not pay; a server calls
:func:`load` at start-up). Its analyzer runs pattern recognizers only, with no NLP model
(spaCy's trained pipelines are not on PyPI, so none can be installed offline): ``NoOpNlpEngine`` gives no
tokens, and context words are not used. Each value is checked by the recognizer, not matched by shape alone:

=============  ===================================================================  ==========================
placeholder    what                                                                 checked by
=============  ===================================================================  ==========================
``<EMAIL>``    addresses, internationalised too (``jörg@müller.de``)                a known TLD (bundled list)
``<PHONE>``    what ``phonenumbers`` takes as a US or UK number (any with ``+``)     a possible number, 8+ digits
``<CARD>``     payment cards                                                        Luhn
``<IBAN>``     IBANs                                                                mod 97, the country's format
``<ID>``       national ids: US SSN/ITIN, UK NHS/NINO, ES NIF/NIE, IT fiscal code,  its checksum where it has one
               PL PESEL, IN Aadhaar, FI personal identity code
``<IP>``       IPv4 and IPv6 addresses                                              ``ipaddress``
``<NAME>``     people's names where tickets write them: a sign-off ("Regards, Dana  a capitalised run of words
               Smith"), a greeting ("Hi Dana,"), "my name is ..."                   in that place
=============  ===================================================================  ==========================

tldextract's bundled suffix list is used (its default fetches one from the internet on first use).

Names have no model behind them: :data:`~pipelines.data.pii_rules.NAME_RULES` (Presidio runs them as
``pii_presidio.NameRecognizer``) are
rules for the places tickets name people ("formal sign-off" also takes a lower-cased "regards, dana kim"), so a
name elsewhere in a sentence stays (``benchmarks/pii_recall.py`` measures recall on planted names). Order
numbers (six digits), amounts, dates and product names are triage fields the models read: they stay.

Every pattern is linear in the text's length (bounded repetitions; Presidio's own e-mail pattern backtracks
quadratically on a long run without an ``@`` and is replaced here), so a long text costs its length, not its
square; callers still bound what they accept (``ingest.max_text_chars``, ``serve.max_text_chars``).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from pipelines.data.pii_rules import (  # noqa: F401 (EMAIL_RE, NAME_RULES, PLACEHOLDERS: re-exported)
    EMAIL_RE,
    MIN_SCORE,
    NAME_RULES,
    PLACEHOLDERS,
)

if TYPE_CHECKING:
    from presidio_analyzer import RecognizerResult


@functools.cache
def _engines():
    """Presidio's analyzer and anonymizer, built on the first scrub (importing Presidio takes seconds: a stage that
    only reads, or refuses its input, does not pay it)."""
    from pipelines.data import pii_presidio

    return pii_presidio.build_engines()


def load() -> None:
    """Build the scrubber now (a server calls it at start-up so its first request does not wait for it)."""
    _engines()


def find_pii(text: str) -> list[RecognizerResult]:
    """The PII values in ``text`` (Presidio results, overlaps not yet resolved)."""
    analyzer, _, _ = _engines()
    return analyzer.analyze(text, language="en", score_threshold=MIN_SCORE)


def scrub_pii(text: str) -> tuple[str, int]:
    """Replace every PII value (see the module's table) by its placeholder; return the text and how many were
    replaced. Overlaps are resolved by Presidio's anonymizer (a card number is not also a phone number)."""
    if not text:
        return text, 0
    _, anonymizer, operators = _engines()
    found = find_pii(text)
    if not found:
        return text, 0
    out = anonymizer.anonymize(text, found, operators=operators)
    return out.text, len(out.items)
