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

Names have no model behind them: :data:`NAME_RULES` (Presidio runs them as ``pii_presidio.NameRecognizer``) are
rules for the places tickets name people ("formal sign-off" also takes a lower-cased "regards, dana kim"), so a
name elsewhere in a sentence stays (``benchmarks/pii_recall.py`` measures recall on planted names). Order
numbers (six digits), amounts, dates and product names are triage fields the models read: they stay.

Every pattern is linear in the text's length (bounded repetitions; Presidio's own e-mail pattern backtracks
quadratically on a long run without an ``@`` and is replaced here), so a long text costs its length, not its
square; callers still bound what they accept (``ingest.max_text_chars``, ``serve.max_text_chars``).
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

import regex

if TYPE_CHECKING:
    from presidio_analyzer import RecognizerResult

ID_ENTITIES = ("US_SSN", "US_ITIN", "UK_NHS", "UK_NINO", "ES_NIF", "ES_NIE", "IT_FISCAL_CODE", "PL_PESEL")
ID_ENTITIES += ("IN_AADHAAR", "FI_PERSONAL_IDENTITY_CODE")

# Presidio entity → placeholder (the style ingest has always written: <EMAIL>, <PHONE>).
PLACEHOLDERS: dict[str, str] = {
    "EMAIL_ADDRESS": "<EMAIL>",
    "PHONE_NUMBER": "<PHONE>",
    "CREDIT_CARD": "<CARD>",
    "IBAN_CODE": "<IBAN>",
    "IP_ADDRESS": "<IP>",
    "PERSON": "<NAME>",
    **dict.fromkeys(ID_ENTITIES, "<ID>"),
}

# A recognizer's result below this is not replaced: Presidio's "very weak" shapes (a bare 9-digit number as an
# SSN, 0.05) would take order and account numbers; checked values score 1.0, phones 0.4, medium shapes 0.5.
MIN_SCORE = 0.4

# Phone numbers need this many digits, as ingest's old pattern did: order numbers (six digits, "482 913"),
# counts and amounts are never phones (pipelines/data/generator.py relies on it).
MIN_PHONE_DIGITS = 8

_CHARS = r"[\w!#$%&'*+/=?^`{|}~-]"  # an e-mail local part's characters, besides the dots between them
_LABEL = r"\w{1,63}(?:-{1,4}\w{1,63}){0,8}"  # a domain label: word characters, inner hyphens (punycode: xn--)
EMAIL_PATTERN = rf"(?<![\w.@]){_CHARS}(?:[\w.!#$%&'*+/=?^`{{|}}~-]{{0,62}}{_CHARS})?@{_LABEL}(?:\.{_LABEL}){{1,8}}\b"

EMAIL_RE = re.compile(EMAIL_PATTERN)  # the shape alone (tests and pandas' str.contains); scrub_pii also checks the TLD


_DATE = regex.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}")


def phone_like(value: str) -> bool:
    """Enough digits, and not a date (2025-01-07, 07/01/2025), which ``phonenumbers`` takes as a possible number."""
    return sum(c.isdigit() for c in value) >= MIN_PHONE_DIGITS and not _DATE.fullmatch(value.strip(" ()[]"))


# Dana, Müller, O'Brien, McKay, Jean-Luc, or an initial (J.)
_WORD = r"(?:(?:\p{Lu}['’])?\p{Lu}\p{Ll}+(?:\p{Lu}\p{Ll}+)?(?:-\p{Lu}\p{Ll}+)?|\p{Lu}\.)"
_PARTICLE = r"(?:van|von|de|der|den|da|di|du|del|della|la|le|dos|das|bin|al|ter)"
NAME = rf"{_WORD}(?:[ \t]{{1,3}}(?:{_PARTICLE}[ \t]{{1,3}}){{0,2}}{_WORD}){{0,3}}"
_NOT_NAMES = (  # capitalised words that follow a greeting or a sign-off and are no name (sign-offs themselves too)
    r"(?:The|Team|Support|All|There|Everyone|Folks|Guys|Sir|Madam|Customer|Service|Friends|Again|Regards|Best|Kind"
    r"|Warm|Thanks|Thank|Many|Cheers|Sincerely|Yours|Respectfully|Take|Hi|Hello|Hey|Dear|Good)\b"
)
_SIGN_OFF = (
    r"(?:regards|best regards|kind regards|warm regards|best wishes|best|thanks|thank you|many thanks|cheers"
    r"|sincerely|yours sincerely|yours truly|yours faithfully|respectfully|take care)"
)
NAME_RULES: dict[str, str] = {
    # "Regards, Dana Smith (Acme Corp)", "Thanks,\nDana": the name ends its line or meets "(", ",", "|", "-"
    "sign-off": rf"(?i:\b{_SIGN_OFF})[ \t]{{0,3}}(?:[,.!:-][ \t]{{0,3}}\n?|\n)[ \t]{{0,3}}(?!{_NOT_NAMES})"
    rf"(?P<name>{NAME})(?=[ \t]{{0,3}}(?:$|\n|[(,|<–-]))",
    # "regards, jonas kim (hooli)": after a formal sign-off the rest of the line is a name in any case
    "formal sign-off": r"(?i:\b(?:(?:best |kind |warm )?regards|sincerely|yours (?:sincerely|truly|faithfully)))"
    rf"[ \t]{{0,3}}[,.:-]?[ \t]{{0,3}}\n?[ \t]{{0,3}}(?!(?i:{_NOT_NAMES}))"
    r"(?P<name>\p{L}[\p{L}'’-]{0,40}(?:[ \t]{1,3}\p{L}[\p{L}'’-]{0,40}){0,2})(?=[ \t]{0,3}(?:$|\n|\())",
    # "Hi Dana,", "Dear Mr Smith:" (a title is kept)
    "greeting": rf"(?i:\b(?:hi|hello|hey|dear|good (?:morning|afternoon|evening)))[ \t]{{1,3}}"
    rf"(?:(?i:mr|mrs|ms|miss|dr)\.?[ \t]{{1,3}})?(?!{_NOT_NAMES})(?P<name>{NAME})(?=[ \t]{{0,3}}[,!:\n])",
    # "my name is Dana Smith", "this is Dana from Acme", "Dana here"
    "introduction": rf"(?i:\bmy name is|\bmy name's|\bname:)[ \t]{{1,3}}(?P<name>{NAME})"
    rf"|(?i:\bthis is)[ \t]{{1,3}}(?P<name>{NAME})(?=[ \t]{{1,3}}(?i:from|at|here)\b)",
}


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
