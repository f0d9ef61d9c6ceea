"""Translation: detect the source language locally, translate with the LLM, keep protected spans.

Code blocks, inline code, URLs, user and channel mentions (`<@U123>`, `<@123>`, `<#C1>`)
and emoji codes (`:smile:`) are swapped for numbered placeholders before the LLM sees the
text and put back as the answer streams; any the model dropped are listed after the
translation, so nothing the user wrote is silently lost. Spans come back as the text the
user wrote, never as live markup: whether a mention notifies is the platform sink's call
(Slack's makes only the user's own `<@U…>`/`<#C…>` live, never `<!channel>`; Discord's
pings nobody). The target is the language the command named (`Turn.target_language`,
Discord's `to:`), else the one the text's pattern
named, else the tenant's; a named language Parley does not know is said so, never replaced
by the default. The prompt has no history: a translation depends only on the text, and the
short fixed system prompt is what the cache serves.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from dataclasses import dataclass

from bot import messages
from bot.handlers import Request, Services, register
from bot.routing.languages import NAMES, code_for, detect

PROTECTED = re.compile(
    r"```.*?```"  # fenced code
    r"|`[^`\n]+`"  # inline code
    r"|https?://[^\s<>\"')\]]+"  # URLs
    # Slack/Discord mentions: <@U123>, <@!123>, <#C123|general>, <!here>; no "<" inside, so that
    # "<@<@<@…" is read once, not from each "<@" to the end (that was quadratic).
    r"|<[@#!][^<>\s]++>"
    r"|:[a-z0-9_+-]+:",  # emoji codes
    re.DOTALL,
)
OPEN, CLOSE = "⟦", "⟧"
PLACEHOLDER = re.compile(rf"{OPEN}(\d+){CLOSE}")
SURE = 0.9  # detection probability above which "already in that language" is said


@dataclass(frozen=True)
class Masked:
    text: str
    spans: tuple[str, ...]

    @property
    def prose(self) -> str:
        """The text without its protected spans: what language detection should read."""
        return PLACEHOLDER.sub(" ", self.text)


def mask(text: str) -> Masked:
    spans: list[str] = []

    def swap(m: re.Match[str]) -> str:
        spans.append(m[0])
        return f"{OPEN}{len(spans) - 1}{CLOSE}"

    return Masked(PROTECTED.sub(swap, text), tuple(spans))


class Unmasker:
    """Restores placeholders in streamed text; a placeholder split across deltas is held
    back until it is complete. `missing` lists spans the model never produced."""

    def __init__(self, spans: tuple[str, ...]) -> None:
        self._spans = spans
        self._seen: set[int] = set()
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        cut = text.rfind(OPEN)
        if cut != -1 and CLOSE not in text[cut:]:
            text, self._held = text[:cut], text[cut:]
        else:
            self._held = ""
        return PLACEHOLDER.sub(self._restore, text)

    def flush(self) -> str:
        rest, self._held = self._held, ""
        return rest

    def _restore(self, m: re.Match[str]) -> str:
        n = int(m[1])
        if n >= len(self._spans):
            return m[0]
        self._seen.add(n)
        return self._spans[n]

    @property
    def missing(self) -> list[str]:
        return [span for n, span in enumerate(self._spans) if n not in self._seen]


def system_prompt(source: str, target: str) -> str:
    return (
        f"You are a translator. Translate the user's message from {source} into {target}. "
        f"Copy every placeholder such as {OPEN}0{CLOSE} exactly as it is, in the right place. "
        "Answer with the translation only."
    )


@register("translate")
class TranslateHandler:
    def __init__(self, services: Services) -> None:
        self._llm = services.llm

    async def answer(self, request: Request) -> AsyncGenerator[str, None]:
        named = request.turn.target_language
        target = code_for(named) if named else request.route.target or request.tenant.language
        if target is None:
            yield messages.unknown_language(named[:40], sorted(NAMES.values()))
            return
        masked = mask(request.route.text or request.turn.text)
        source, probability = detect(masked.prose)
        if source == target and probability >= SURE:
            yield messages.already_in(NAMES.get(target, target))
            return
        chat = [
            {
                "role": "system",
                "content": system_prompt(NAMES.get(source, "the source language"), NAMES.get(target, target)),
            },
            {"role": "user", "content": masked.text},
        ]
        unmasker = Unmasker(masked.spans)
        async with self._llm.stream(chat, scope=request.scope) as stream:
            async for delta in stream:
                if restored := unmasker.feed(delta):
                    yield restored
        if rest := unmasker.flush():
            yield rest
        if unmasker.missing:
            yield messages.TRANSLATION_SPANS_LOST.format(spans=" ".join(unmasker.missing))
