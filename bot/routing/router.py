"""Intent routing: decide what a turn asks for (`qa`, `translate`, `handoff` or `chat`), cheapest first.

1. explicit: a slash command the adapter passed through (`ask`, `translate`), or a plain
   pattern such as "translate to German: ..." (a regex, microseconds);
2. semantic: a softmax regression over the message's multilingual embedding and a few cues
   (`bot.routing.classifier`), trained at start-up on the shipped labelled set plus the
   operator's examples (one embedding and one small matrix product, ~1-2 ms). A request
   for a person wins at a lower probability than the others (a missed one leaves someone
   waiting on a bot); when every intent would answer as plain chat does (QA for a tenant
   with no knowledge base, handoff and translate not allowed), nothing is computed (step `moot`);
3. llm: when the top two intents are closer than the margin, vLLM picks one label under
   a structured-output constraint (one short constrained request).

The `Route` records which step decided, so that `parley eval routing` and the logs can
say where accuracy and time go.
"""

from __future__ import annotations

import hashlib
import json
import logging
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
from bot.routing import classifier
from bot.routing.classifier import Example, IntentModel, features, read_examples
from bot.routing.embeddings import Embedder
from bot.routing.languages import ALIASES, code_for
from bot.tenants import DATA, INTENTS
from bot.turns import ASK_PERSON

log = logging.getLogger(__name__)

# What routing can answer: the tenants' handlers, and `handoff` (the user asks for a person),
# which is no handler but the dialogue manager handing the conversation to the team
# (`bot.handoff.flow`); whether it is allowed is PARLEY_HANDOFF_ON_REQUEST, not a tenant's list.
HANDOFF = "handoff"
COMMANDS = {"ask": "qa", "translate": "translate", ASK_PERSON: HANDOFF}
LABELS = (*INTENTS, HANDOFF)
# Not a label of the classifier: a chat or qa turn in a conversation that may use actions is
# answered by the action handler, which falls back to that intent when no action is called.
ACTION = "action"
ACTABLE = ("chat", "qa")
FIT_BATCH = 256  # training messages embedded per call
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
    otherwise: str | None = None  # an `action` route: the intent that answers when no action is called


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


def training_examples(settings: RoutingSettings) -> list[Example]:
    """The labelled set the model is fitted to: the shipped (or the operator's) JSONL file,
    and the phrases of the examples file, so an operator's new example counts at the next start."""
    examples = read_examples(settings.training_file or DATA / "routing-train.jsonl", LABELS)
    for intent, phrases in load_examples(settings.examples_file).items():
        examples.extend(Example(phrase, intent) for phrase in phrases)
    return examples


async def fit(examples: Sequence[Example], embedder: Embedder, settings: RoutingSettings) -> IntentModel:
    texts = [e.text for e in examples]
    # In batches: an embeddings server may cap the inputs of one request.
    batches = [await embedder.embed(texts[i : i + FIT_BATCH]) for i in range(0, len(texts), FIT_BATCH)]
    x = features(texts, np.vstack(batches))
    return IntentModel.fit(x, [e.intent for e in examples], LABELS, class_weight={HANDOFF: settings.handoff_weight})


def model_key(examples: Sequence[Example], embedder: Embedder, settings: RoutingSettings) -> str:
    """What a trained model depends on, hashed: the examples, the embedding model, the training
    settings, and the code that makes features and fits (this module and the classifier's)."""
    digest = hashlib.sha256()
    for code in (classifier.__file__, __file__):
        digest.update(Path(code).read_bytes())
    digest.update(json.dumps([embedder.name, settings.handoff_weight, list(LABELS)]).encode())
    for example in examples:
        digest.update(json.dumps([example.text, example.intent]).encode())
    return digest.hexdigest()[:20]


class Router:
    """Built once by the composition root (`await Router.create(...)` trains the model)."""

    def __init__(self, *, settings: RoutingSettings, embedder: Embedder, llm: LLM | None, model: IntentModel) -> None:
        self._settings = settings
        self._embedder = embedder
        self._llm = llm
        self._model = model

    @classmethod
    async def create(
        cls, *, settings: RoutingSettings, embedder: Embedder, llm: LLM | None, cache: Path | None = None
    ) -> Router:
        """Train the model, or load the one trained on exactly these examples, with this
        embedder and this code, from `cache` (a folder): every replica after the first, and
        every restart, starts without embedding the training set again."""
        started = time.perf_counter()
        examples = training_examples(settings)
        saved = cache / f"routing-{model_key(examples, embedder, settings)}.npz" if cache else None
        if saved is not None and saved.exists():
            try:
                model = IntentModel.load(saved)
                log.info("routing model loaded from %s", saved)
                return cls(settings=settings, embedder=embedder, llm=llm, model=model)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("routing model in %s unreadable (%s); training again", saved, exc)
        model = await fit(examples, embedder, settings)
        log.info("routing model trained on %d examples in %.2f s", len(examples), time.perf_counter() - started)
        if saved is not None:
            try:
                model.save(saved)
            except OSError as exc:
                log.info("routing model not cached in %s (%s): it is trained at every start", saved, exc)
        return cls(settings=settings, embedder=embedder, llm=llm, model=model)

    def probabilities(self, text: str, vector: np.ndarray) -> dict[str, float]:
        """Each intent's probability for `text` whose embedding is `vector`."""
        row = self._model.probabilities(features([text], vector[None, :]))[0]
        return {label: float(p) for label, p in zip(self._model.labels, row, strict=True)}

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

    async def _semantic(
        self, text: str, allowed: Sequence[str], as_chat: AsChat | None, scope: CallScope | None
    ) -> Route:
        for intent in LABELS:
            if not await self._moot(intent, "chat", allowed, as_chat):
                break
        else:
            # Whichever intent won, the answer would be plain chat's: the embedding could not
            # change it, so it is not computed.
            return Route("chat", "moot", text)
        try:
            probabilities = self.probabilities(text, (await self._embedder.embed([text]))[0])
        except EmbedderError as exc:
            log.warning("routing by embeddings failed (%s); answering as chat", exc)
            return Route("chat", "no-match", text)
        ranked = sorted(probabilities.items(), key=lambda kv: kv[1], reverse=True)
        if probabilities[HANDOFF] >= self._settings.handoff_threshold and ranked[0][0] != HANDOFF:
            # A request for a person is taken at a lower probability: recall matters more there.
            ranked.remove((HANDOFF, probabilities[HANDOFF]))
            ranked.insert(0, (HANDOFF, probabilities[HANDOFF]))
        (best, top), (second, runner_up) = ranked[0], ranked[1]
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
                return self._with_target(Route(chosen, "llm", text, score=probabilities[chosen]))
            except LLMError as exc:
                log.warning("routing by LLM failed (%s); taking the likeliest intent", type(exc).__name__)
        return self._with_target(Route(best, "semantic", text, score=top))

    @staticmethod
    def _with_target(route: Route) -> Route:
        if route.intent != "translate":
            return route
        return Route(route.intent, route.step, route.text, named_language(route.text), route.score)
