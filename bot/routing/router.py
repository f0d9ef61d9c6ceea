"""Intent routing: decide what a turn asks for (`qa`, `translate`, `handoff` or `chat`), cheapest first.

1. explicit: a slash command the adapter passed through (`ask`, `translate`), or a plain
   pattern such as "translate to German: ..." (a regex, microseconds);
2. semantic: the message's embedding against example phrases per intent (an operator-
   editable TOML file), scored as the mean of each intent's closest examples; below the
   no-match threshold the turn is plain chat (one embedding, a few ms). Handoff and
   translate are candidates only when the message asks for them (a regex cue each); when
   every candidate would answer as plain chat does (QA for a tenant with no knowledge
   base), the embedding is not computed at all (step `moot`);
3. llm: when the top two intents are closer than the margin, vLLM picks one label under
   a structured-output constraint (one short constrained request).

The `Route` records which step decided, so that `parley eval routing` and the logs can
say where accuracy and time go.
"""

from __future__ import annotations

import logging
import math
import re
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.config import RoutingSettings
from bot.errors import ConfigError, EmbedderError, LLMError
from bot.llm.client import LLM, CallScope
from bot.routing.embeddings import Embedder
from bot.routing.languages import ALIASES, code_for
from bot.tenants import DATA, INTENTS

log = logging.getLogger(__name__)

COMMANDS = {"ask": "qa", "translate": "translate"}
# What routing can answer: the tenants' handlers, and `handoff` (the user asks for a person),
# which is no handler but the dialogue manager handing the conversation to the team
# (`bot.handoff.flow`); whether it is allowed is PARLEY_HANDOFF_ON_REQUEST, not a tenant's list.
HANDOFF = "handoff"
LABELS = (*INTENTS, HANDOFF)
AsChat = Callable[[str], Awaitable[bool]]  # whether an intent would answer this turn exactly as chat

_LANG = "|".join(sorted((re.escape(name) for name in ALIASES), key=len, reverse=True))
# Every pattern here reads user text, so each must run in linear time: one message with
# thousands of newlines between "how do you say x" and "in french" held the event loop for
# ~32 s when a `\s+` could give back what a neighbouring `\s*` or `.+?` then took again.
# Whitespace runs are taken possessively (`\s++`, `\s*+`: never given back, and nothing
# after them starts with whitespace), and a lazily grown text ends at a non-space (`.*?\S`),
# so each run is scanned a fixed number of times. tests/security/test_patterns.py checks it.
_VERB = (
    r"(?:please\s++|pls\s++|can you\s++|could you\s++)?"
    r"(?:translate|tranlsate|transalte|traduis|traduire|traduce|traducir|traduci|tradurre|traduz|traduza|traduzir"
    r"|übersetze|übersetzen|ubersetze|vertaal|przetłumacz)"
    r"(?:\s++(?:please|pls|bitte|s'il te plaît|s'il vous plaît|por favor|per favore|alsjeblieft))?"
)
# "translate to German: text", "traduis en anglais : texte", "übersetze ins Englische: Text"
_TO_LANG = re.compile(
    rf"^\s*+{_VERB}\b(?:\s++(?:this|that|the following|it|ceci|cela|esto|das|dies|folgendes))?\s*+"
    rf"(?:(?:in)?to|in|into|en|al|a|auf|nach|ins|in die|para|naar|na)\s++(?P<lang>{_LANG})(?:e|n)?\b"
    rf"\s*+[:\-\u2013,]?\s*+(?P<text>.*)$",
    re.IGNORECASE | re.DOTALL,
)
# "translate: text" (target: the tenant's language)
# (`\s*` before the text stays greedy: it may give back one space, so that "translate:  " is a
# request with an empty text, as it always was.)
_BARE = re.compile(rf"^\s*+{_VERB}\b\s*+(?:(?:this|that)\s*+)?[:\-\u2013]\s*(?P<text>.+)$", re.IGNORECASE | re.DOTALL)
# "German: text" as the argument of a /translate command
_LANG_PREFIX = re.compile(
    rf"^\s*+(?:(?:in)?to\s++)?(?P<lang>{_LANG})\s*+[:\-\u2013,]\s*(?P<text>.+)$", re.IGNORECASE | re.DOTALL
)
# "how do you say X in Spanish", "what is X in French"
_HOW_SAY = re.compile(
    rf"^\s*+(?:how\s++(?:do|would|can)\s++(?:you|i|we)\s++say|what(?:'s|\s++is)\s++the\s++\w++\s++for)"
    rf"\s++(?P<text>.*?\S)\s++in\s++(?P<lang>{_LANG})\s*+\??\s*+$",
    re.IGNORECASE | re.DOTALL,
)
# A translate request names the act or a language; without either, a message that merely
# resembles the translate examples (often: one written in another language) is not one.
_TRANSLATE_CUE = re.compile(
    rf"translat|tradu|übersetz|ubersetz|vertaal|tłumacz|\bmeans?\b|\bsays?\b|\bversion\b|\b(?:{_LANG})\b", re.IGNORECASE
)
# A request for a person names one (or the act of talking to one); a message that merely
# resembles the handoff examples ("are you chatgpt?", "Bonjour tout le monde") is not one.
# A wrong handoff costs a person's time and leaves the user waiting, so the bar is higher.
# ("call me back" is a cue; an "on-call rotation" is not.)
_HANDOFF_CUE = re.compile(
    r"human|\bperson|people|some(?:one|body)|any(?:one|body)|\bagent|staff|\bteam|manager|supervisor|operator"
    r"|representative|\bsupport|(?<!-)\bcall\b|\breal\b|\bspeak|\btalk|mensch|mitarbeiter|jemand|humain|conseiller|quelqu"
    r"|persona|agente|operador|operatore|umano|alguien|qualcuno",
    re.IGNORECASE,
)
# A language named anywhere ("... into French please"), for translate requests found semantically.
_ANY_LANG = re.compile(rf"\b(?:in|into|to|en|auf|ins|nach|al|para)\s++(?P<lang>{_LANG})\b", re.IGNORECASE)

CHOOSE_PROMPT = (
    "You route messages sent to a customer-support chat bot. Answer with one label:\n"
    "qa: a question or problem about the product, the account, billing, features, errors or policies;\n"
    "translate: a request to translate a text into another language;\n"
    "handoff: the user asks to talk to a person, a human agent or the support team instead of the bot;\n"
    "chat: greetings, thanks, small talk, questions about the bot itself, anything else."
)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a turn goes. `text` is what the handler works on (a pattern's prefix stripped),
    `target` a language code named by the command or pattern, `step` which step decided."""

    intent: str
    step: str  # explicit | moot | semantic | llm | no-match | disabled
    text: str
    target: str | None = None
    score: float | None = None
    seconds: float = 0.0


def explicit(command: str | None, text: str) -> Route | None:
    """Step 1: commands and plain patterns."""
    if command in COMMANDS:
        intent = COMMANDS[command]
        if intent == "translate" and (m := _LANG_PREFIX.match(text)):
            return Route(intent, "explicit", m["text"].strip(), code_for(m["lang"]))
        return Route(intent, "explicit", text.strip())
    if m := _TO_LANG.match(text):
        return Route("translate", "explicit", m["text"].strip(), code_for(m["lang"]))
    if m := _HOW_SAY.match(text):
        return Route("translate", "explicit", m["text"].strip().strip("\"'“”"), code_for(m["lang"]))
    if m := _BARE.match(text):
        return Route("translate", "explicit", m["text"].strip())
    return None


def named_language(text: str) -> str | None:
    """A target language named in a free-form translate request, if any."""
    m = _ANY_LANG.search(text)
    return code_for(m["lang"]) if m else None


def load_examples(path: Path | None) -> dict[str, list[str]]:
    """The example phrases per intent; an invalid file is a `ConfigError` naming it."""
    path = path or DATA / "intents.toml"
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError("PARLEY_ROUTING_EXAMPLES_FILE", f"cannot read {path}: {exc}") from None
    examples: dict[str, list[str]] = {}
    for intent, table in raw.items():
        phrases = table.get("examples") if isinstance(table, dict) else None
        if (
            intent not in LABELS
            or not isinstance(phrases, list)
            or not all(isinstance(p, str) and p.strip() for p in phrases)
        ):
            raise ConfigError(
                "PARLEY_ROUTING_EXAMPLES_FILE",
                f"{path}: [{intent}] must be one of {', '.join(LABELS)} "
                'with `examples = ["...", ...]` (non-empty strings)',
            )
        examples[intent] = phrases
    if not examples:
        raise ConfigError("PARLEY_ROUTING_EXAMPLES_FILE", f"{path}: no intents")
    return examples


class Router:
    """Built once by the composition root (`await Router.create(...)` embeds the examples)."""

    def __init__(
        self,
        *,
        settings: RoutingSettings,
        embedder: Embedder,
        llm: LLM | None,
        labels: Sequence[str],
        vectors: np.ndarray,
    ) -> None:
        self._settings = settings
        self._embedder = embedder
        self._llm = llm
        self._labels = np.array(labels)
        self._vectors = vectors
        self._intents = sorted(set(labels))

    @classmethod
    async def create(cls, *, settings: RoutingSettings, embedder: Embedder, llm: LLM | None) -> Router:
        examples = load_examples(settings.examples_file)
        labels = [intent for intent, phrases in examples.items() for _ in phrases]
        vectors = await embedder.embed([p for phrases in examples.values() for p in phrases])
        return cls(settings=settings, embedder=embedder, llm=llm, labels=labels, vectors=vectors)

    def scores(self, vector: np.ndarray) -> dict[str, float]:
        """Each intent's score: the mean similarity of its `neighbours` closest examples."""
        sims = self._vectors @ vector
        k = self._settings.neighbours
        out = {}
        for intent in self._intents:
            mine = sims[self._labels == intent]
            top = mine if len(mine) <= k else np.partition(mine, -k)[-k:]
            out[intent] = float(top.mean())
        return out

    async def route(
        self,
        text: str,
        *,
        command: str | None = None,
        allowed: Sequence[str] = LABELS,
        as_chat: AsChat | None = None,
        scope: CallScope | None = None,
    ) -> Route:
        """`as_chat(intent)` says whether that intent's handler would answer this turn exactly as
        plain chat does (QA for a tenant with no knowledge base): a close call between two
        intents that end in the same answer is then settled without asking the LLM."""
        started = time.perf_counter()
        route = explicit(command, text) or await self._semantic(text, allowed, as_chat, scope)
        if route.intent not in allowed:
            route = Route("chat", "disabled", text, score=route.score)
        return Route(route.intent, route.step, route.text, route.target, route.score, time.perf_counter() - started)

    async def _moot(self, a: str, b: str, allowed: Sequence[str], as_chat: AsChat | None) -> bool:
        """Whether intents `a` and `b` end in the same answer (a disallowed one is answered as chat)."""

        async def outcome(intent: str) -> str:
            if intent not in allowed or (as_chat is not None and await as_chat(intent)):
                return "chat"
            return intent

        return await outcome(a) == await outcome(b)

    def _candidates(self, text: str) -> list[str]:
        """The intents `text` may be routed to by its embedding. Handoff and translate must be
        asked for (a person or a call; a language or a verb), however close their examples
        are: otherwise they are not even the runner-up that would send a close call to the LLM
        ("conversation 13" is a little like "take over this chat", "What is Parley?" like a
        translation request)."""
        return [
            intent
            for intent in self._intents
            if (intent != HANDOFF or _HANDOFF_CUE.search(text))
            and (intent != "translate" or _TRANSLATE_CUE.search(text))
        ]

    async def _semantic(
        self, text: str, allowed: Sequence[str], as_chat: AsChat | None, scope: CallScope | None
    ) -> Route:
        candidates = self._candidates(text)
        for intent in candidates:
            if not await self._moot(intent, "chat", allowed, as_chat):
                break
        else:
            # Whichever of them won, the answer would be plain chat's (QA for a tenant with no
            # knowledge base): the embedding could not change it, so it is not computed.
            return Route("chat", "moot", text)
        try:
            scores = self.scores((await self._embedder.embed([text]))[0])
        except EmbedderError as exc:
            log.warning("routing by embeddings failed (%s); answering as chat", exc)
            return Route("chat", "no-match", text)
        ranked = sorted(((intent, scores[intent]) for intent in candidates), key=lambda kv: kv[1], reverse=True)
        best, top = ranked[0]
        if top < self._settings.threshold:
            return Route("chat", "no-match", text, score=top)
        second, runner_up = ranked[1] if len(ranked) > 1 else ("", -math.inf)  # a lone candidate: no close call
        if (
            top - runner_up < self._settings.margin
            and self._settings.llm_fallback
            and self._llm is not None
            and not await self._moot(best, second, allowed, as_chat)
        ):
            try:
                chosen = await self._llm.choose(
                    [{"role": "system", "content": CHOOSE_PROMPT}, {"role": "user", "content": text}],
                    [best, second],
                    scope=scope,
                )
                return self._with_target(Route(chosen, "llm", text, score=scores[chosen]))
            except LLMError as exc:
                log.warning("routing by LLM failed (%s); taking the closest intent", type(exc).__name__)
        return self._with_target(Route(best, "semantic", text, score=top))

    @staticmethod
    def _with_target(route: Route) -> Route:
        if route.intent != "translate":
            return route
        return Route(route.intent, route.step, route.text, named_language(route.text), route.score)
