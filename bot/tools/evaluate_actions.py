"""`parley eval actions`: how often the model picks the right action with the right arguments.

Each line of the file is {"text", "action", "arguments"?, "lang"?}: `action` is the action
the request needs ("" when it needs none); `arguments`, when given, are the ones that must
come with it (compared case-insensitively as text; arguments not listed, such as a ticket's
wording, are not judged). The decision is the one the action handler asks for, against the
engine of PARLEY_LLM_BASE_URL, with the actions of the tenants file. The figures say nothing
about a model with random weights (the demo model): the command says so when it serves one.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.actions.loop import Actions, with_actions
from bot.actions.spec import ActionSpec
from bot.errors import LLMError
from bot.tools.evaluate import Say, read_jsonl


@dataclass
class Tally:
    requests: int = 0
    right_action: int = 0  # the first call is the expected action (or no call when none is needed)
    right_arguments: int = 0  # ... and its listed arguments match
    failed: int = 0  # the engine gave no usable decision

    def rate(self, n: int) -> float:
        return n / self.requests if self.requests else 0.0


@dataclass
class ActionsReport:
    model: str
    overall: Tally = field(default_factory=Tally)
    per_lang: dict[str, Tally] = field(default_factory=dict)
    per_action: dict[str, Tally] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)
    misses: list[str] = field(default_factory=list)


def _same(expected: dict[str, Any], got: Any) -> bool:
    if not isinstance(got, dict):
        return False
    return all(str(got.get(k, "")).strip().casefold() == str(v).strip().casefold() for k, v in expected.items())


async def eval_actions(
    actions: Actions, specs: Sequence[ActionSpec], system: str, path: Path, model: str, say: Say
) -> ActionsReport:
    names = {s.name for s in specs}
    rows = list(read_jsonl(path, {"text": str, "action": str}))
    report = ActionsReport(model)
    prompt = with_actions(system, specs)
    for n, row in enumerate(rows, 1):
        expected = row["action"]
        if expected and expected not in names:
            say(f"{path}: {expected!r} is not an action of the tenants file; counted as a miss")
        started = time.perf_counter()
        try:
            picks = await actions.decide(
                [{"role": "system", "content": prompt}, {"role": "user", "content": row["text"]}],
                specs,
                actions.settings.max_calls,
                None,
            )
            failed = False
        except LLMError:
            picks, failed = [], True
        report.seconds.append(time.perf_counter() - started)
        first = picks[0] if picks else None
        right = (first is None and not expected and not failed) or (first is not None and first[0].name == expected)
        args_ok = right and (first is None or _same(row.get("arguments") or {}, first[1]))
        for tally in (
            report.overall,
            report.per_lang.setdefault(str(row.get("lang") or "?"), Tally()),
            report.per_action.setdefault(expected or "(none)", Tally()),
        ):
            tally.requests += 1
            tally.right_action += right
            tally.right_arguments += args_ok
            tally.failed += failed
        if not args_ok:
            got = "failed" if failed else (f"{first[0].name} {first[1]}" if first else "(none)")
            report.misses.append(
                f"wanted {expected or '(none)'} {row.get('arguments') or ''}, got {got}: {row['text'][:70]}"
            )
        if n % 10 == 0:
            say(f"decided {n}/{len(rows)}")
    return report


def print_actions(report: ActionsReport, out: Callable[[str], None] = print) -> None:
    if "demo" in report.model:
        out(f"model {report.model}: random weights, so these figures measure the plumbing, not the choice")
    else:
        out(f"model {report.model}")

    def line(label: str, t: Tally) -> str:
        return (
            f"  {label:<14} {t.requests:>4}   right action {t.rate(t.right_action):6.1%}   "
            f"with right arguments {t.rate(t.right_arguments):6.1%}   no decision {t.failed}"
        )

    out(line("all", report.overall))
    out("per language:")
    for lang in sorted(report.per_lang):
        out(line(lang, report.per_lang[lang]))
    out("per expected action:")
    for name in sorted(report.per_action):
        out(line(name, report.per_action[name]))
    if report.seconds:
        out(f"decision time: median {statistics.median(report.seconds) * 1000:.0f} ms")
    for miss in report.misses[:30]:
        out(f"  miss: {miss}")
