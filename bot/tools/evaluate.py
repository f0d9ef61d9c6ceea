"""`parley eval routing`: accuracy and speed on labelled JSONL files (`evaluate_kb` does the
knowledge base).

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

from bot.config import RoutingSettings
from bot.errors import ParleyError
from bot.routing.classifier import Example, IntentModel, complement, features, folds
from bot.routing.embeddings import Embedder
from bot.routing.router import HANDOFF, LABELS, Router, training_examples

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
    source: str  # what was measured: a file, or "k-fold cross-validation"
    total: int = 0
    correct: int = 0
    per_step: Counter[str] = field(default_factory=Counter)
    correct_per_step: Counter[str] = field(default_factory=Counter)
    per_lang: Counter[str] = field(default_factory=Counter)
    correct_per_lang: Counter[str] = field(default_factory=Counter)
    confusion: Counter[tuple[str, str]] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    misses: list[tuple[str, str, str, str]] = field(default_factory=list)  # text, expected, got, step

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.seconds) * 1000 if self.seconds else 0.0

    @property
    def median_cpu_ms(self) -> float:
        return statistics.median(self.cpu_seconds) * 1000 if self.cpu_seconds else 0.0

    def recall(self, intent: str) -> tuple[int, int]:
        """(routed to `intent`, labelled `intent`)."""
        labelled = sum(n for (expected, _), n in self.confusion.items() if expected == intent)
        return self.confusion[(intent, intent)], labelled

    def language_accuracy(self, lang: str) -> float:
        return self.correct_per_lang[lang] / self.per_lang[lang] if self.per_lang[lang] else 0.0

    async def add(self, router: Router, example: Example) -> None:
        cpu = time.process_time()
        route = await router.route(example.text)
        self.cpu_seconds.append(time.process_time() - cpu)
        self.total += 1
        self.per_step[route.step] += 1
        self.per_lang[example.lang] += 1
        self.confusion[(example.intent, route.intent)] += 1
        self.seconds.append(route.seconds)
        if route.intent == example.intent:
            self.correct += 1
            self.correct_per_step[route.step] += 1
            self.correct_per_lang[example.lang] += 1
        else:
            self.misses.append((example.text, example.intent, route.intent, route.step))


def read_labelled(path: Path) -> list[Example]:
    rows = [
        Example(r["text"], r["intent"], str(r.get("lang") or "?"))
        for r in read_jsonl(path, {"text": str, "intent": str})
    ]
    if not rows:
        raise EvalInputError(f"{path}: no rows")
    return rows


async def eval_routing(router: Router, path: Path, say: Say) -> RoutingReport:
    """Route every message of a labelled file the model was not trained on."""
    examples = read_labelled(path)
    report = RoutingReport(str(path))
    for number, example in enumerate(examples, 1):
        await report.add(router, example)
        if number % 100 == 0:
            say(f"routed {number}/{len(examples)}")
    return report


async def cross_validate(settings: RoutingSettings, embedder: Embedder, k: int, say: Say) -> RoutingReport:
    """k-fold cross-validation of the whole routing path (patterns, then the model) over the
    training examples: each message is routed by a model fitted on the other folds. The LLM
    tie-break is left out, so the figure is the model's own."""
    if k < 2:
        raise EvalInputError("--cv needs at least 2 folds")
    examples = training_examples(settings)
    say(f"embedding {len(examples)} training examples...")
    x = features([e.text for e in examples], await embedder.embed([e.text for e in examples]))
    parts = folds(examples, k)
    report = RoutingReport(f"{k}-fold cross-validation over {len(examples)} training examples")
    for n, held in enumerate(parts, 1):
        train = complement(parts, held)
        model = IntentModel.fit(
            x[train], [examples[i].intent for i in train], LABELS, class_weight={HANDOFF: settings.handoff_weight}
        )
        router = Router(settings=settings, embedder=embedder, llm=None, model=model)
        for i in held:
            await report.add(router, examples[i])
        say(f"fold {n}/{k}: {report.correct}/{report.total} so far")
    return report


def print_routing(report: RoutingReport, out: Callable[[str], None] = print) -> None:
    out(f"routing on {report.source}")
    out(f"accuracy: {report.correct}/{report.total} = {report.accuracy:.1%}")
    routed, asked = report.recall(HANDOFF)
    out(f"handoff recall: {routed}/{asked} asked for a person were handed over")
    out("per language (messages / correct):")
    for lang, count in sorted(report.per_lang.items()):
        out(f"  {lang:<10} {count:>4}  {report.language_accuracy(lang):6.1%}")
    out("per intent (labelled / recall):")
    for intent in LABELS:
        routed, labelled = report.recall(intent)
        if labelled:
            out(f"  {intent:<10} {labelled:>4}  {routed / labelled:6.1%}")
    out("per step (decided / correct):")
    for step, count in report.per_step.most_common():
        out(f"  {step:<10} {count:>4}  {report.correct_per_step[step] / count:6.1%}")
    labels = sorted({e for e, _ in report.confusion} | {g for _, g in report.confusion} | set(LABELS))
    out("confusion (rows: expected, columns: routed):")
    out("  " + " " * 10 + "".join(f"{g:>10}" for g in labels))
    for expected in labels:
        out("  " + f"{expected:<10}" + "".join(f"{report.confusion[(expected, g)]:>10}" for g in labels))
    out(f"routing time per message: median {report.median_ms:.2f} ms, CPU {report.median_cpu_ms:.2f} ms")
    for text, expected, got, step in report.misses:
        out(f"  miss: {expected} -> {got} ({step}): {' '.join(text.split())[:80]}")
