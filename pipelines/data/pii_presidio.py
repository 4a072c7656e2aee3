"""Presidio behind :mod:`pipelines.data.pii` (the only module that imports it): the recognizers it runs, and its
analyzer and anonymizer built without an NLP model (``NoOpNlpEngine``). What each recognizer finds, and how it is
checked, is described in :mod:`pipelines.data.pii`.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import regex
import tldextract

from pipelines.data.pii_rules import EMAIL_PATTERN, MIN_PHONE_DIGITS, MIN_SCORE, NAME_RULES, PLACEHOLDERS, phone_like


@contextlib.contextmanager
def _hidden(*modules: str) -> Iterator[None]:
    """Import Presidio as if ``modules`` were not installed: it imports transformers (and spaCy's thinc imports
    torch) only for NER engines never used here; hidden, the import took 6.6 s instead of 27-35 s on the loaded
    2-core box. Presidio and thinc guard those imports (``except ImportError``). A module already imported is left
    alone and each is importable again afterwards; a thread importing one of them meanwhile would fail, so this
    runs once, on the first scrub (a server calls :func:`pipelines.data.pii.load` at start-up)."""
    absent = [m for m in modules if m not in sys.modules]
    for m in absent:
        sys.modules[m] = None  # type: ignore[assignment]  # "import m" raises ImportError
    try:
        yield
    finally:
        for m in absent:
            if m in sys.modules and sys.modules[m] is None:
                del sys.modules[m]


with _hidden("torch", "transformers"):
    import presidio_analyzer.context_aware_enhancers  # noqa: F401 (each used below)
    import presidio_analyzer.nlp_engine.no_op_nlp_engine  # noqa: F401
    import presidio_analyzer.predefined_recognizers  # noqa: F401
    import presidio_anonymizer  # noqa: F401

from presidio_analyzer import (  # noqa: E402 (imported above, with torch and transformers hidden)
    AnalyzerEngine,
    EntityRecognizer,
    LocalRecognizer,
    Pattern,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import ContextAwareEnhancer  # noqa: E402
from presidio_analyzer.nlp_engine import NlpArtifacts  # noqa: E402
from presidio_analyzer.nlp_engine.no_op_nlp_engine import NoOpNlpEngine  # noqa: E402
from presidio_analyzer.predefined_recognizers import (  # noqa: E402
    CreditCardRecognizer,
    EmailRecognizer,
    EsNieRecognizer,
    EsNifRecognizer,
    FiPersonalIdentityCodeRecognizer,
    IbanRecognizer,
    InAadhaarRecognizer,
    IpRecognizer,
    ItFiscalCodeRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    PlPeselRecognizer,
    UkNinoRecognizer,
    UsItinRecognizer,
    UsSsnRecognizer,
)
from presidio_anonymizer import AnonymizerEngine  # noqa: E402
from presidio_anonymizer.entities import OperatorConfig  # noqa: E402

_OFFLINE_TLDS = tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None)  # the bundled list: nothing fetched


class _Email(EmailRecognizer):
    """Presidio's e-mail recognizer with a bounded pattern and the bundled TLD list (its default fetches one)."""

    def __init__(self) -> None:
        super().__init__(patterns=[Pattern("Email (bounded)", EMAIL_PATTERN, 0.5)])

    def validate_result(self, pattern_text: str) -> bool:
        return _OFFLINE_TLDS(pattern_text.rpartition("@")[2]).suffix != ""


class _Phone(PhoneRecognizer):
    """Presidio's phone recognizer (``phonenumbers``), US and UK national formats, any with ``+``; a number
    must be possible (random area codes are, as customers type them) and have at least 8 digits."""

    def __init__(self) -> None:
        super().__init__(supported_regions=("US", "GB"), leniency=0)

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None):
        if sum(c.isdigit() for c in text) < MIN_PHONE_DIGITS:  # cheap: most texts stop here
            return []
        found = super().analyze(text, entities, nlp_artifacts)
        return [r for r in found if phone_like(text[r.start : r.end])]


class NameRecognizer(LocalRecognizer):
    """People's names where support tickets write them (see :data:`NAME_RULES`), without an NER model."""

    def __init__(self) -> None:
        self.rules = {k: regex.compile(v, regex.MULTILINE) for k, v in NAME_RULES.items()}
        super().__init__(supported_entities=["PERSON"], name="NameRecognizer")

    def load(self) -> None:  # nothing to load: the rules are compiled above
        pass

    def analyze(self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None):
        return [RecognizerResult("PERSON", s, e, 0.85) for s, e in self.spans(text)]

    def spans(self, text: str) -> Iterator[tuple[int, int]]:
        for rule in self.rules.values():
            for m in rule.finditer(text):
                yield m.span("name")


class _NoContext(ContextAwareEnhancer):
    """No context words: the no-op NLP engine gives no tokens (and the default enhancer deep-copies every result)."""

    def __init__(self) -> None:
        super().__init__(0.0, 0.0, 0, 0)

    def enhance_using_context(self, text, raw_results, nlp_artifacts, recognizers, context=None):
        return raw_results


def recognizers() -> list[EntityRecognizer]:
    """The recognizers :func:`scrub_pii` runs (one instance each)."""
    ids = [UsSsnRecognizer(), UsItinRecognizer(), NhsRecognizer(), UkNinoRecognizer(), InAadhaarRecognizer()]
    en = "en"  # the texts are English; these recognizers default to their country's language
    ids += [EsNifRecognizer(supported_language=en), EsNieRecognizer(supported_language=en)]
    ids += [ItFiscalCodeRecognizer(supported_language=en), PlPeselRecognizer(supported_language=en)]
    ids += [FiPersonalIdentityCodeRecognizer(supported_language=en)]
    return [_Email(), _Phone(), CreditCardRecognizer(), IbanRecognizer(), IpRecognizer(), NameRecognizer(), *ids]


def build_engines() -> tuple[AnalyzerEngine, AnonymizerEngine, dict[str, OperatorConfig]]:
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)  # it logs every recognizer at start-up
    nlp = NoOpNlpEngine(models=[{"lang_code": "en", "model_name": "none"}])
    nlp.load()
    registry = RecognizerRegistry(supported_languages=["en"])
    for rec in recognizers():
        registry.add_recognizer(rec)
    analyzer = AnalyzerEngine(
        registry=registry,
        nlp_engine=nlp,
        supported_languages=["en"],
        default_score_threshold=MIN_SCORE,
        context_aware_enhancer=_NoContext(),
    )
    missing = set(analyzer.get_supported_entities("en")) ^ set(PLACEHOLDERS)
    if missing:
        raise RuntimeError(f"PII recognizers and placeholders disagree on {sorted(missing)}")
    operators = {k: OperatorConfig("replace", {"new_value": v}) for k, v in PLACEHOLDERS.items()}
    return analyzer, AnonymizerEngine(), operators
