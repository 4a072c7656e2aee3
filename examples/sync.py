"""Keep the example params files full copies of params.yaml: ``python examples/sync.py`` (``make examples``).

Each example replaces params.yaml over a user's copy (``cp examples/<name> params.yaml && make run``), so it must
hold every section. Its own sections (:data:`OWN_SECTIONS`: the data set's, or the scaled-up training) are kept
as they are in the example; every other section is taken, text and comments, from params.yaml. The header
comment above the first section is the example's own. tests/pipelines/test_config.py checks, key by key, that an
example differs from params.yaml only where it should.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# example file -> the top-level sections that are its own (all others mirror params.yaml)
OWN_SECTIONS: dict[str, tuple[str, ...]] = {
    "clinc150.params.yaml": ("data", "validate", "split", "leakage", "abstention", "finetune", "llm"),
    "sms_spam.params.yaml": ("data", "validate", "split", "leakage", "finetune", "llm"),
    "params-llm-full.yaml": ("sft_data", "sft"),
}

_SECTION = re.compile(r"^(?P<key>[A-Za-z_][\w-]*):", re.M)


def sections(text: str) -> tuple[str, dict[str, str]]:
    """(the text before the first section, {section: its text up to the next section, comments included})."""
    starts = list(_SECTION.finditer(text))
    # a section's leading comment lines belong to it, not to the one before
    bounds = []
    for m in starts:
        start = m.start()
        while start > 0:
            prev = text.rfind("\n", 0, start - 1) + 1
            if text[prev:start].startswith("#"):
                start = prev
            else:
                break
        bounds.append((m["key"], start))
    head = text[: bounds[0][1]] if bounds else text
    out = {}
    for i, (key, start) in enumerate(bounds):
        end = bounds[i + 1][1] if i + 1 < len(bounds) else len(text)
        out[key] = text[start:end]
    return head, out


def synced(params_text: str, example_text: str, own: tuple[str, ...]) -> str:
    base_head, base = sections(params_text)
    ex_head, ex = sections(example_text)
    header = ex_head[: len(ex_head) - len(base_head)] if ex_head.endswith(base_head) else ex_head
    missing = [k for k in own if k not in ex]
    if missing:
        raise SystemExit(f"{missing}: not in the example; add them by hand first")
    body = "".join(ex[k] if k in own else base[k] for k in base)
    return header + base_head + body


def main() -> int:
    params_text = (ROOT / "params.yaml").read_text(encoding="utf-8")
    for name, own in OWN_SECTIONS.items():
        path = ROOT / "examples" / name
        new = synced(params_text, path.read_text(encoding="utf-8"), own)
        if new != path.read_text(encoding="utf-8"):
            path.write_text(new, encoding="utf-8")
            print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
