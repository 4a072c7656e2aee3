"""What PII looks like to :mod:`pipelines.data.pii` and the recognizers of :mod:`pipelines.data.pii_presidio`:
the placeholders, the score floor, the phone and e-mail shapes and the rules that find names (no Presidio here, so
both import this and neither imports the other)."""

from __future__ import annotations

import re

import regex

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
