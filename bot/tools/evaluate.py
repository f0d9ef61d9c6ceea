"""`parley eval routing` and `parley eval kb`: accuracy and speed on labelled JSONL files.

Both print a plain table to stdout (progress goes to stderr through `say`) and return
their figures, so the tests run the same code with a floor on accuracy. Timings are
medians measured here, printed, never asserted.
"""

from __future__ import annotations

import json
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import ParleyError
from bot.knowledge.base import KnowledgeBase, load_documents
from bot.routing.router import LABELS, Router
from bot.tenants import DATA

Say = Callable[[str], None]


class EvalInputError(ParleyError):
    """An eval file is missing or has a bad line; the message names the file and line."""


def read_jsonl(path: Path, fields: dict[str, type]) -> Iterator[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalInputError(f"{path}:{number}: not JSON ({exc.msg})") from None
        for name, kind in fields.items():
            if not isinstance(row, dict) or not isinstance(row.get(name), kind):
                raise EvalInputError(f"{path}:{number}: needs a {kind.__name__} field {name!r}")
        yield row


@dataclass
class RoutingReport:
    total: int = 0
    correct: int = 0
    per_step: Counter[str] = field(default_factory=Counter)
    correct_per_step: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    misses: list[tuple[str, str, str, str]] = field(default_factory=list)  # text, expected, got, step

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000 if self.seconds else 0.0


async def eval_routing(router: Router, path: Path | None, say: Say) -> RoutingReport:
    path = path or DATA / "routing-eval.jsonl"
    rows = list(read_jsonl(path, {"text": str, "intent": str}))
    if not rows:
        raise EvalInputError(f"{path}: no rows")
    report = RoutingReport()
    for number, row in enumerate(rows, 1):
        route = await router.route(row["text"])
        report.total += 1
        report.per_step[route.step] += 1
        report.confusion[(row["intent"], route.intent)] += 1
        report.seconds.append(route.seconds)
        if route.intent == row["intent"]:
            report.correct += 1
            report.correct_per_step[route.step] += 1
        else:
            report.misses.append((row["text"], row["intent"], route.intent, route.step))
        if number % 50 == 0:
            say(f"routed {number}/{len(rows)}")
    return report


def print_routing(report: RoutingReport, out: Callable[[str], None] = print) -> None:
    out(f"accuracy: {report.correct}/{report.total} = {report.accuracy:.1%}")
    out("per step (decided / correct):")
    for step, count in report.per_step.most_common():
        out(f"  {step:<10} {count:>4}  {report.correct_per_step[step] / count:6.1%}")
    labels = sorted({e for e, _ in report.confusion} | {g for _, g in report.confusion} | set(LABELS))
    out("confusion (rows: expected, columns: routed):")
    out("  " + " " * 10 + "".join(f"{g:>10}" for g in labels))
    for expected in labels:
        out("  " + f"{expected:<10}" + "".join(f"{report.confusion[(expected, g)]:>10}" for g in labels))
    out(f"median routing time: {report.median_ms:.2f} ms per message")
    for text, expected, got, step in report.misses:
        out(f"  miss: {expected} -> {got} ({step}): {text[:80]}")


@dataclass
class KBReport:
    k: int
    answerable: int = 0
    hits: int = 0
    unanswerable: int = 0
    refused: int = 0
    false_refusals: int = 0
    seconds: list[float] = field(default_factory=list)
    misses: list[tuple[str, str, list[str]]] = field(default_factory=list)

    @property
    def hit_rate(self) -> float:
        return self.hits / self.answerable if self.answerable else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.unanswerable if self.unanswerable else 0.0


async def eval_kb(kb: KnowledgeBase, path: Path, kb_path: Path, say: Say) -> KBReport:
    """Ingest the KB folder into an in-memory index, then ask each question."""
    rows = list(read_jsonl(path, {"question": str, "doc": str, "answerable": bool}))
    if not rows:
        raise EvalInputError(f"{path}: no rows")
    documents = load_documents(kb_path)
    say(f"embedding {len(documents)} documents from {kb_path}...")
    index = await kb.build_index(documents)
    report = KBReport(k=kb.top_k)
    for row in rows:
        started = time.perf_counter()
        found = await kb.search(index, row["question"])
        report.seconds.append(time.perf_counter() - started)
        sources = [hit.chunk.source for hit in found]
        if row["answerable"]:
            report.answerable += 1
            if any(s == row["doc"] or s.endswith("/" + row["doc"]) for s in sources):
                report.hits += 1
            else:
                report.misses.append((row["question"], row["doc"], sources))
            report.false_refusals += not found
        else:
            report.unanswerable += 1
            report.refused += not found
            if found:
                report.misses.append((row["question"], "(none)", sources))
    return report


def print_kb(report: KBReport, out: Callable[[str], None] = print) -> None:
    out(f"hit@{report.k}: {report.hits}/{report.answerable} = {report.hit_rate:.1%} of answerable questions")
    out(f"refused when unanswerable: {report.refused}/{report.unanswerable} = {report.refusal_rate:.1%}")
    out(f"refused although answerable: {report.false_refusals}/{report.answerable}")
    out(f"median retrieval time: {statistics.median(report.seconds) * 1000:.2f} ms per question")
    for question, doc, sources in report.misses:
        out(f"  miss: wanted {doc}, got {', '.join(sources) or 'nothing'}: {question[:70]}")
