"""The embedded demo corpus: chatterbot-corpus dialogs as prompt/response JSONL files.

The dialogs are written as they are, including the odd entry (a one-turn conversation,
a non-string answer), so the demo shows the quarantine at work on real data.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from deepfeed.core.platform.home import package_dir

LANGUAGES = {"english": "en", "chinese": "zh"}


def dialog_pairs(conversation: list) -> list[dict]:
    """Successive turns as pairs: (t0, t1), (t1, t2)... keep the dialog's context."""
    if len(conversation) < 2:
        return [{"prompt": conversation[0] if conversation else None}]
    return [{"prompt": conversation[i], "response": conversation[i + 1]} for i in range(len(conversation) - 1)]


def write_demo_corpus(target: Path, languages: dict[str, str] = LANGUAGES) -> dict[str, int]:
    """One JSONL file per language and category; returns lines written per file."""
    data_dir = package_dir("chatterbot_corpus") / "data"
    target.mkdir(parents=True, exist_ok=True)
    written: dict[str, int] = {}
    for folder, lang in languages.items():
        for path in sorted((data_dir / folder).glob("*.yml")):
            document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            categories = [str(c).lower() for c in document.get("categories", [])] or [path.stem]
            lines = []
            for conversation in document.get("conversations", []):
                for pair in dialog_pairs(conversation):
                    lines.append(json.dumps({**pair, "lang": lang, "tags": categories}, ensure_ascii=False))
            out = target / lang / f"{path.stem}.jsonl"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text("\n".join(lines) + "\n", encoding="utf-8")
            written[f"{lang}/{path.stem}.jsonl"] = len(lines)
    return written


def ensure_demo_corpus(target: Path) -> Path:
    if not any(target.glob("*/*.jsonl")):
        write_demo_corpus(target)
    return target
