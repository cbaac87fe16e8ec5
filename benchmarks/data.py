"""Reproducible benchmark data: texts built from the sample sentences in ``examples/data``.

Lengths are heavy-tailed, as real corpora are: the number of sentences per
record is log-normal (most records are one to three sentences, a few run to
dozens and are truncated), so padding to the longest row of an unsorted batch
wastes a lot of compute and length-sorted batching has something to win.
Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed
gives the same records on every machine.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Iterator

import numpy as np

DATA = Path(__file__).resolve().parent.parent / "examples" / "data"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'])")
#: text-bearing fields of the sample files
_TEXT_FIELDS = ("review", "text", "context", "document", "summary", "source", "question")
LABELS = ("negative", "positive")


@lru_cache(maxsize=1)
def sentences() -> tuple[str, ...]:
    """Every distinct English sentence in the sample data files, in a fixed order."""
    found: dict[str, None] = {}
    for path in sorted(DATA.glob("*.jsonl")):
        if path.name == "en_de.jsonl":
            fields = ("source",)
        else:
            fields = _TEXT_FIELDS
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            record = json.loads(line)
            for name in fields:
                value = record.get(name)
                if isinstance(value, str):
                    for sentence in _SENTENCE_END.split(value.strip()):
                        if len(sentence.split()) >= 3:
                            found.setdefault(sentence.strip(), None)
    return tuple(found)


def sentence_counts(rng: np.random.Generator, n: int, median: float = 2.0, sigma: float = 0.9, cap: int = 60) -> np.ndarray:
    """Log-normal sentences per record: median ``median``, long right tail, at least 1, at most ``cap``."""
    counts = np.rint(rng.lognormal(np.log(median), sigma, size=n)).astype(int)
    return np.clip(counts, 1, cap)


def texts(n: int, seed: int = 0, median: float = 2.0, sigma: float = 0.9) -> list[str]:
    """``n`` texts of a log-normal number of sample sentences each."""
    pool = sentences()
    rng = np.random.default_rng(seed)
    counts = sentence_counts(rng, n, median, sigma)
    picks = rng.integers(0, len(pool), size=int(counts.sum()))
    out, start = [], 0
    for count in counts:
        out.append(" ".join(pool[i] for i in picks[start : start + count]))
        start += count
    return out


def classification_records(n: int, seed: int = 0) -> list[dict]:
    """Records with ``text`` and a (random, seeded) ``label``, as a text-classification pipeline reads them."""
    rng = np.random.default_rng(seed + 1)
    labels = rng.integers(0, len(LABELS), size=n)
    return [{"id": i, "text": text, "label": LABELS[label]} for i, (text, label) in enumerate(zip(texts(n, seed), labels))]


def qa_records(n: int, seed: int = 0) -> list[dict]:
    """Question/context pairs: the context is a log-normal number of sentences, the question is built from one of them
    (so it shares words with the context, as SQuAD questions do)."""
    pool = sentences()
    rng = np.random.default_rng(seed)
    counts = sentence_counts(rng, n, median=4.0, sigma=0.8)
    records = []
    for i, count in enumerate(counts):
        chosen = [pool[j] for j in rng.integers(0, len(pool), size=int(count))]
        target = chosen[int(rng.integers(0, len(chosen)))]
        words = target.rstrip(".!?").split()
        question = "What " + " ".join(words[1 : min(len(words), 8)]) + "?"
        records.append({"id": i, "question": question, "context": " ".join(chosen)})
    return records


def seq2seq_records(n: int, seed: int = 0) -> list[dict]:
    """Documents (for summarization) / sources (for translation) of log-normal length."""
    return [{"id": i, "document": text, "source": text} for i, text in enumerate(texts(n, seed, median=2.0, sigma=0.7))]


def write_jsonl(path: Path, records: Iterator[dict] | list[dict]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path
