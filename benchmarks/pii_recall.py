"""PII scrubbing: recall per entity on planted values, false positives on clean tickets, time per text.

    python -m benchmarks.pii_recall [--per-entity 200] [--tickets 2000] [--seed 7] [--long-chars 2000000]

Planted set (seeded): values of each kind :func:`pipelines.data.pii.scrub_pii` covers, each written into a clean
built-in ticket (pipelines/data/generator.py, no planted PII) in one of several phrasings and formats:
valid (Luhn) card numbers of four networks, grouped or not; valid (mod-97) IBANs of five countries; e-mail
addresses, a third of them internationalised (accents, non-Latin scripts); US, UK and international phone
numbers; national ids (US SSN, UK NHS with its checksum, UK NINO, ES NIF with its letter, PL PESEL with its
checksum); IPv4 and IPv6 addresses; and names: the generator's own sign-offs ("Regards, <first> <last>
(<company>)") plus greetings, introductions and other sign-offs. A value counts as found when it is gone from
the scrubbed text and its placeholder is there.

Clean set: the same tickets with nothing planted; the only change allowed is the signer's name. Order numbers,
amounts, dates, counts and product names (triage fields) must come out unchanged: any other change is a false
positive. Then the time per text over the built-in tickets (with the generator's own PII), and a long text of
hostile shapes (no ``@`` in a long run of word characters, a long digit run, ``<a`` with no ``>``) at 1% and 10%
of ``--long-chars`` (the time must grow with the length, not its square), and a record of ``--long-chars``
characters through ingest, which cuts (or drops) it at ``ingest.max_text_chars`` before any pattern runs.
"""

from __future__ import annotations

import argparse
import random
import string
import time

import pandas as pd

from pipelines.config import GenerateConfig, IngestConfig, parse_params
from pipelines.data.generator import generate_tickets
from pipelines.data.ingestion import ingest
from pipelines.data.pii import scrub_pii

PLACEHOLDER = {
    "card": "<CARD>",
    "iban": "<IBAN>",
    "email": "<EMAIL>",
    "phone": "<PHONE>",
    "id": "<ID>",
    "ip": "<IP>",
    "name": "<NAME>",
}


def _luhn_complete(partial: str) -> str:
    total = 0
    for i, d in enumerate(reversed(partial)):
        n = int(d) * (2 if i % 2 == 0 else 1)
        total += n - 9 if n > 9 else n
    return partial + str((10 - total % 10) % 10)


def card(r: random.Random) -> str:
    prefix, length = r.choice([("4", 16), ("51", 16), ("55", 16), ("6011", 16), ("37", 15), ("34", 15)])
    digits = _luhn_complete(prefix + "".join(r.choice(string.digits) for _ in range(length - len(prefix) - 1)))
    if length == 15:
        return r.choice([digits, f"{digits[:4]} {digits[4:10]} {digits[10:]}"]) if r.random() < 0.5 else digits
    sep = r.choice(["", " ", "-"])
    return sep.join(digits[i : i + 4] for i in range(0, 16, 4))


IBAN_FORMATS = {"GB": "4a14n", "DE": "18n", "FR": "10n11c2n", "ES": "20n", "NL": "4a10n"}


def iban(r: random.Random) -> str:
    country = r.choice(sorted(IBAN_FORMATS))
    bban = ""
    for count, kind in __import__("re").findall(r"(\d+)([anc])", IBAN_FORMATS[country]):
        pool = {"a": string.ascii_uppercase, "n": string.digits, "c": string.digits + string.ascii_uppercase}[kind]
        bban += "".join(r.choice(pool) for _ in range(int(count)))
    number = int("".join(str(int(c, 36)) for c in bban + country + "00"))
    value = f"{country}{98 - number % 97:02d}{bban}"
    return value if r.random() < 0.5 else " ".join(value[i : i + 4] for i in range(0, len(value), 4))


ASCII_LOCAL = ["dana.smith", "lee_kim", "sam+tickets", "a.rossi", "fatima99", "j.doe", "priya.n"]
IDN = ["jörg.müller@beispiel.de", "josé.garcía@correo.es", "françois@société.fr", "søren@eksempel.dk",
       "用户@例子.中国", "почта@пример.рф", "θεός@παράδειγμα.ελ", "zoë@müller-bau.de"]  # fmt: skip


def email(r: random.Random) -> str:
    if r.random() < 1 / 3:
        return r.choice(IDN)
    domain = r.choice(["acme.com", "mail.example.co.uk", "globex.io", "initech.de", "hooli.org", "xn--mller-kva.de"])
    return f"{r.choice(ASCII_LOCAL)}{r.randint(0, 999)}@{domain}"


def phone(r: random.Random) -> str:
    a, b, c = r.randint(201, 989), r.randint(200, 999), r.randint(1000, 9999)
    forms = [
        f"+1 ({a}) {b}-{c}",
        f"{a}-{b}-{c}",
        f"({a}) {b} {c}",
        f"+1 {a} {b} {c}",
        f"+44 20 {r.randint(7000, 8999)} {r.randint(1000, 9999)}",
        f"07{r.randint(400, 999)} {r.randint(100000, 999999)}",
        f"020 {r.randint(7000, 8999)} {r.randint(1000, 9999)}",
        f"+49 30 {r.randint(1000000, 9999999)}",
        f"+33 1 {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)}",
    ]
    return r.choice(forms)


def _nhs(r: random.Random) -> str:
    while True:
        digits = [r.randint(0, 9) for _ in range(9)]
        check = 11 - sum(d * (10 - i) for i, d in enumerate(digits)) % 11
        if check == 11:
            check = 0
        if check != 10:
            s = "".join(map(str, digits)) + str(check)
            return f"{s[:3]} {s[3:6]} {s[6:]}"


def _pesel(r: random.Random) -> str:
    digits = [r.randint(0, 9) for _ in range(2)] + [0, r.randint(1, 9), r.randint(1, 2), r.randint(0, 8)]
    digits += [r.randint(0, 9) for _ in range(4)]
    weights = [1, 3, 7, 9, 1, 3, 7, 9, 1, 3]
    return "".join(map(str, digits)) + str((10 - sum(d * w for d, w in zip(digits, weights)) % 10) % 10)


def national_id(r: random.Random) -> str:
    kind = r.choice(["ssn", "nhs", "nino", "nif", "pesel"])
    if kind == "ssn":
        area = r.choice([n for n in range(1, 900) if n != 666])
        return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
    if kind == "nhs":
        return _nhs(r)
    if kind == "nino":
        first, second = "B", "G"
        while first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):  # prefixes HMRC never allocates
            first, second = r.choice("ABCEGHJKLMNPRSTWXYZ"), r.choice("ABCEGHJKLMNPRSTWXYZ")
        return f"{first}{second} {r.randint(10, 99)} {r.randint(10, 99)} {r.randint(10, 99)} {r.choice('ABCD')}"
    if kind == "nif":
        n = r.randint(10_000_000, 99_999_999)
        return f"{n}{'TRWAGMYFPDXBNJZSQVHLCKE'[n % 23]}"
    return _pesel(r)


def ip(r: random.Random) -> str:
    if r.random() < 0.7:
        return ".".join(str(r.randint(1, 254)) for _ in range(4))
    return (
        ":".join(f"{r.randint(0, 0xFFFF):x}" for _ in range(8))
        if r.random() < 0.5
        else "2001:db8::" + str(r.randint(1, 9999))
    )


FIRST = ["Anna", "Björn", "Chloé", "Diego", "Élodie", "Hiroshi", "Ingrid", "Kwame", "Oksana", "Rahul", "Zoë"]
LAST = ["Andersson", "Brown", "Dubois", "Fernández", "Ivanova", "Nakamura", "O'Brien", "Mensah", "Novak", "Singh"]
# (where, form): a greeting or an introduction opens the ticket, a sign-off closes it
NAME_FORMS = [
    ("open", "Hi {first},\n"),
    ("open", "My name is {first} {last} and "),
    ("open", "This is {first} from Acme. "),
    ("open", "Dear {first} {last},\n"),
    ("close", "\nThanks,\n{first} {last}"),
    ("close", "\nBest regards,\n{first}"),
    ("close", "\nKind regards, {first} {last}"),
]

SENTENCES = {
    "card": ["My card number is {v}.", "Charge it to {v} please.", "The card {v} was declined."],
    "iban": ["Please refund to IBAN {v}.", "My bank account is {v}.", "Send it to {v} instead."],
    "email": ["You can reach me at {v}.", "Email {v} with the invoice.", "My login is {v}"],
    "phone": ["Call me on {v}.", "My number is {v}", "Phone {v} after six."],
    "id": ["My social security number is {v}.", "Patient id {v}.", "For the record my ID is {v}."],
    "ip": ["The login came from {v}.", "Blocked IP {v} again", "Our server at {v} cannot connect."],
}
MAKERS = {"card": card, "iban": iban, "email": email, "phone": phone, "id": national_id, "ip": ip}


def clean_tickets(n: int, seed: int) -> pd.DataFrame:
    """Built-in tickets with no planted PII, HTML or empty bodies (the signer's name is their only PII)."""
    cfg = GenerateConfig(n_rows=max(n, 100), seed=seed, pii_rate=0.0, html_rate=0.0, empty_body_rate=0.0)
    return generate_tickets(cfg).head(n).reset_index(drop=True)


def planted_set(per_entity: int = 200, seed: int = 7) -> pd.DataFrame:
    """Rows of (entity, value, text): one planted value in a clean ticket each; ``name`` rows are the
    generator's sign-offs plus other places a name is written."""
    r = random.Random(seed)
    tickets = clean_tickets(per_entity, seed)
    rows = []
    for entity, make in MAKERS.items():
        for i in range(per_entity):
            value = make(r)
            body = tickets["body"].iloc[i]
            sentence = r.choice(SENTENCES[entity]).format(v=value)
            head, _, sign_off = body.rpartition("\n")
            rows.append((entity, value, f"{head} {sentence}\n{sign_off}"))
    for i in range(per_entity):  # the generator's own signer ("Regards, <first> <last> (<company>)")
        body = tickets["body"].iloc[i]
        signer = body.rpartition("Regards, ")[2].rpartition(" (")[0]
        rows.append(("name", signer, body))
    for i in range(per_entity):  # other places a name is written, in a ticket without its sign-off
        first, last = r.choice(FIRST), r.choice(LAST)
        where, form = r.choice(NAME_FORMS)
        head = tickets["body"].iloc[i].rpartition("\n")[0]
        said = form.format(first=first, last=last)
        value = f"{first} {last}" if "{last}" in form else first
        rows.append(("name", value, said + head if where == "open" else head + said))
    return pd.DataFrame(rows, columns=["entity", "value", "text"])


def found(entity: str, value: str, scrubbed: str) -> bool:
    return value not in scrubbed and PLACEHOLDER[entity] in scrubbed


def recall(planted: pd.DataFrame) -> dict[str, float]:
    """Share of the planted values of each entity that :func:`scrub_pii` replaced."""
    hits = [found(e, v, scrub_pii(t)[0]) for e, v, t in planted.itertuples(index=False)]
    return planted.assign(hit=hits).groupby("entity")["hit"].mean().to_dict()


def expected_clean(body: str) -> str:
    """A clean ticket as the scrubber should leave it: only the signer replaced."""
    at = body.lower().rfind("regards, ")  # near duplicates are lower-cased ("regards, dana smith (acme)")
    if at < 0:
        return body
    start = at + len("regards, ")
    return body[:start] + "<NAME>" + body[body.index(" (", start) :]


def false_positives(tickets: pd.DataFrame) -> list[tuple[str, str]]:
    """(original, scrubbed) of clean tickets (subject and body) changed beyond their signer's name."""
    bad = []
    for subject, body in zip(tickets["subject"], tickets["body"]):
        for text, want in ((subject, subject), (body, expected_clean(body))):
            got = scrub_pii(text)[0]
            if got != want:
                bad.append((text, got))
    return bad


def hostile_texts(n_chars: int) -> dict[str, str]:
    """Long texts of the shapes that make backtracking patterns slow."""
    return {
        "word run without @": ("a" * 1000 + ".") * (n_chars // 1001),
        "digit run": "1234 5678 " * (n_chars // 10),
        "tag opening without >": "<a " * (n_chars // 3),
        "mixed ticket text": ("Regards, Dana Smith (Acme) call +1 (555) 123-4567 order 482913. " * (n_chars // 64)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-entity", type=int, default=200)
    ap.add_argument("--tickets", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--long-chars", type=int, default=2_000_000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    scrub_pii("warm up: Presidio's recognizers are built on the first call")
    print(f"first call (import and build): {time.perf_counter() - t0:.1f} s")

    planted = planted_set(args.per_entity, args.seed)
    print(f"\nrecall on planted values ({args.per_entity} per entity, names: {2 * args.per_entity}):")
    for entity, share in recall(planted).items():
        print(f"  {entity:<6} {share:6.1%}")

    clean = clean_tickets(args.tickets, args.seed + 1)
    bad = false_positives(clean)
    print(f"\nfalse positives: {len(bad)} of {2 * len(clean)} clean texts changed beyond the signer")
    for text, got in bad[:5]:
        print(f"  {text!r}\n    -> {got!r}")

    texts = generate_tickets(GenerateConfig(n_rows=args.tickets, seed=args.seed))["body"].tolist()
    t0 = time.perf_counter()
    replaced = sum(scrub_pii(t)[1] for t in texts)
    dt = time.perf_counter() - t0
    chars = sum(map(len, texts))
    print(
        f"\nbuilt-in tickets: {len(texts)} texts ({chars / len(texts):.0f} chars on average), {replaced} values "
        f"replaced: {1000 * dt / len(texts):.2f} ms per text"
    )
    print("\nlong texts straight into the scrubber (time grows with the length, not its square):")
    for name in hostile_texts(1000):
        cells = []
        for n in (args.long_chars // 100, args.long_chars // 10):
            text = hostile_texts(n)[name]
            t0 = time.perf_counter()
            scrub_pii(text)
            cells.append(f"{len(text):>9,} chars {time.perf_counter() - t0:6.2f} s")
        print(f"  {name:<24} " + "   ".join(cells))

    print(f"\na {args.long_chars:,}-character record through ingest (ingest.max_text_chars, default 10,000):")
    data = parse_params({}).data
    raw = generate_tickets(GenerateConfig(n_rows=100, seed=args.seed))
    raw.loc[0, "body"] = hostile_texts(args.long_chars)["mixed ticket text"]
    for action in ("truncate", "drop"):
        t0 = time.perf_counter()
        _, summary = ingest(raw, data, IngestConfig(over_long=action))
        print(f"  over_long: {action:<8} {time.perf_counter() - t0:6.2f} s for 100 rows ({summary['over_long']})")


if __name__ == "__main__":
    main()
