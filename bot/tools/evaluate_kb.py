"""`parley eval kb`: retrieval and refusals on a labelled JSONL file of questions over a KB folder.

Each line is {"question", "answerable", "doc", "lang"}: "doc" names the document that answers
it (null or "" when unanswerable), "lang" is optional (counted as "?"). A question is refused
when its evidence is below `refuse_below`; a borderline one (below `check_below`) is left to
the LLM, which the QA handler asks. Without `--llm` the eval counts those separately and as
answered (what the bot does when the engine fails); with it, the LLM decides them here too.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bot.handlers.qa import passages_answer
from bot.knowledge.base import KnowledgeBase, Ranking, load_documents
from bot.llm.client import LLM
from bot.tools.evaluate import EvalInputError, Say, read_jsonl


@dataclass
class Tally:
    """Counts for one language (or all)."""

    answerable: int = 0
    top1: int = 0  # the right document first
    hit_k: int = 0  # the right document among the k passages
    false_refusals: int = 0  # answerable, refused
    answerable_checked: int = 0  # answerable, borderline (left to the LLM)
    unanswerable: int = 0
    refused: int = 0  # unanswerable, refused
    unanswerable_checked: int = 0  # unanswerable, borderline (left to the LLM)

    @property
    def top1_rate(self) -> float:
        return self.top1 / self.answerable if self.answerable else 0.0

    @property
    def hit_rate(self) -> float:
        return self.hit_k / self.answerable if self.answerable else 0.0

    @property
    def refusal_rate(self) -> float:
        return self.refused / self.unanswerable if self.unanswerable else 0.0

    @property
    def false_refusal_rate(self) -> float:
        return self.false_refusals / self.answerable if self.answerable else 0.0


@dataclass
class KBReport:
    k: int
    ranking: Ranking
    llm: bool  # borderline questions were decided by the LLM
    overall: Tally = field(default_factory=Tally)
    per_lang: dict[str, Tally] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)

    # The overall rates, as the floors in the tests read them.
    @property
    def top1_rate(self) -> float:
        return self.overall.top1_rate

    @property
    def hit_rate(self) -> float:
        return self.overall.hit_rate

    @property
    def refusal_rate(self) -> float:
        return self.overall.refusal_rate

    @property
    def false_refusal_rate(self) -> float:
        return self.overall.false_refusal_rate


def _is(source: str, doc: str) -> bool:
    return source == doc or source.endswith("/" + doc)


async def eval_kb(
    kb: KnowledgeBase,
    path: Path,
    kb_path: Path,
    say: Say,
    *,
    ranking: Ranking = "hybrid",
    llm: LLM | None = None,
) -> KBReport:
    """Ingest the KB folder into an in-memory index, then ask each question."""
    rows = list(read_jsonl(path, {"question": str, "answerable": bool}))
    if not rows:
        raise EvalInputError(f"{path}: no rows")
    for number, row in enumerate(rows, 1):
        if row["answerable"] and not (isinstance(row.get("doc"), str) and row["doc"]):
            raise EvalInputError(f"{path}: question {number} is answerable and needs a str field 'doc'")
    documents = load_documents(kb_path)
    say(f"embedding {len(documents)} documents from {kb_path}...")
    index = await kb.build_index(documents)
    report = KBReport(k=kb.top_k, ranking=ranking, llm=llm is not None)
    for row in rows:
        question = row["question"]
        started, cpu = time.perf_counter(), time.process_time()
        found = await kb.lookup(index, question, ranking=ranking)
        report.seconds.append(time.perf_counter() - started)
        report.cpu_seconds.append(time.process_time() - cpu)
        evidence = found.evidence
        refused = not evidence.covered
        if evidence.borderline and llm is not None:
            refused = not await passages_answer(llm, question, found.hits)
        sources = [hit.chunk.source for hit in found.hits]
        lang = str(row.get("lang") or "?")
        for tally in (report.overall, report.per_lang.setdefault(lang, Tally())):
            if row["answerable"]:
                tally.answerable += 1
                tally.top1 += bool(sources) and _is(sources[0], row["doc"])
                tally.hit_k += any(_is(s, row["doc"]) for s in sources)
                tally.false_refusals += refused
                tally.answerable_checked += evidence.borderline
            else:
                tally.unanswerable += 1
                tally.refused += refused
                tally.unanswerable_checked += evidence.borderline
        shown = f"[{lang}] {' '.join(question.split())[:70]}"
        got = ", ".join(sources) or "nothing"
        if row["answerable"] and not (sources and _is(sources[0], row["doc"])):
            report.misses.append(f"wrong first: wanted {row['doc']}, got {got}: {shown}")
        if row["answerable"] and refused:
            report.misses.append(f"refused although answerable ({evidence}): {shown}")
        if not row["answerable"] and not refused:
            report.misses.append(f"answered although unanswerable ({evidence}; {got}): {shown}")
    return report


def _line(label: str, t: Tally, k: int) -> str:
    def rate(n: int, of: int) -> str:
        return f"{n:>3}/{of:<3} {n / of:6.1%}" if of else f"{'-':>15}"

    return (
        f"  {label:<5} {rate(t.top1, t.answerable)}  {rate(t.hit_k, t.answerable)}  "
        f"{rate(t.refused, t.unanswerable)}  {rate(t.false_refusals, t.answerable)}  "
        f"{t.answerable_checked:>4} / {t.unanswerable_checked:<4}"
    )


def print_kb(report: KBReport, out: Callable[[str], None] = print) -> None:
    o = report.overall
    decided = "decided by the LLM" if report.llm else "counted as answered: run with --llm to let the LLM decide"
    out(f"{o.answerable} answerable and {o.unanswerable} unanswerable questions, {report.k} passages, {report.ranking}")
    out(f"borderline evidence (the QA handler asks the LLM): {decided}")
    out(
        f"  {'lang':<5} {'top-1 right doc':>15}  {f'hit@{report.k}':>15}  {'unans. refused':>15}  "
        f"{'ans. refused':>15}  borderline ans / unans"
    )
    out(_line("all", o, report.k))
    for lang in sorted(report.per_lang, key=lambda lang: (lang == "?", lang)):
        out(_line(lang, report.per_lang[lang], report.k))
    out(
        f"retrieval time per question: median {statistics.median(report.seconds) * 1000:.2f} ms, "
        f"CPU {statistics.median(report.cpu_seconds) * 1000:.2f} ms"
    )
    for miss in report.misses:
        out(f"  {miss}")
