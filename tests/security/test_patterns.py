"""Every regex in Parley finishes in linear time, whatever a user, the model or a document sends it.

One message must never stall the event loop (issue 12, item 2): "how do you say x", 2,000
newlines, "in french", 2,000 newlines, "!" held `bot.routing.router._HOW_SAY` for ~32 s, long
enough for another replica to reclaim the turn and freeze too.

The patterns are found, not listed: the `bot` and `adapters` packages are walked for compiled
patterns at module level, inside module-level tuples, lists, sets and dicts, and as class
attributes, so a pattern added later is tested without touching this file (a pattern built
inside a function is invisible here: compile it at module level). Each one runs `search` and
`findall` (which walks the same matches as `finditer` and `sub`) over hostile strings ten times
the size limits, and every call must finish within a time budget.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import math
import pkgutil
import re
import signal
import time
from collections.abc import Callable, Iterator
from types import ModuleType

import pytest

from bot.config import ContextSettings, WebSettings

PACKAGES = ("bot", "adapters")
# Ten times the largest message Parley accepts (PARLEY_CONTEXT_MAX_INPUT_CHARS, 8,000 characters by
# default; the web chat's PARLEY_WEB_MAX_MESSAGE_CHARS is 4,000).
SIZE = 10 * max(
    ContextSettings.model_fields["max_input_chars"].default, WebSettings.model_fields["max_message_chars"].default
)
# CPU seconds per call (CPU time, not wall time: other processes on a busy machine do not
# count). Measured here: the linear patterns take at most ~75 ms on any of these inputs
# (`_EMAIL`, `_TRANSLATE_CUE`: a 64-character bound, or a long alternation, tried at every
# position); the super-linear ones they replaced took 3.7 s (kb's line-break pattern) to
# 30 s (`_BARE`, kb's front matter) and more than 120 s (`_HOW_SAY`) on the same inputs.
BUDGET = 0.75
STOP_AFTER = 2 * BUDGET  # a call still running then is stopped: the test fails, but does not hang
SHOWN = 5  # slow inputs listed per pattern (then the pattern's test stops: it has failed)


def _modules() -> Iterator[ModuleType]:
    for name in PACKAGES:
        package = importlib.import_module(name)
        yield package
        # `bot` is a namespace package, which may span several checkouts on sys.path (the
        # editable install adds its own): walk the first, the one its modules import from.
        for info in pkgutil.walk_packages(list(package.__path__)[:1], f"{name}."):
            yield importlib.import_module(info.name)


def _patterns() -> dict[str, re.Pattern[str]]:
    """Every compiled pattern the packages hold, by where it was found first."""
    found: dict[str, re.Pattern[str]] = {}
    seen: set[int] = set()

    def add(name: str, value: object, depth: int = 0) -> None:
        if isinstance(value, re.Pattern):
            if id(value) not in seen:
                seen.add(id(value))
                found[name] = value
        elif depth < 2 and isinstance(value, (tuple, list, set, frozenset)):
            for i, item in enumerate(value):
                add(f"{name}[{i}]", item, depth + 1)
        elif depth < 2 and isinstance(value, dict):
            for key, item in value.items():
                add(f"{name}[{key!r}]", item, depth + 1)

    for module in _modules():
        for attr, value in vars(module).items():
            if inspect.isclass(value) and value.__module__ == module.__name__:
                for class_attr, class_value in vars(value).items():
                    add(f"{module.__name__}.{attr}.{class_attr}", class_value)
            else:
                add(f"{module.__name__}.{attr}", value)
    return found


PATTERNS = _patterns()


def _fill(unit: str, size: int = SIZE) -> str:
    """`unit` repeated to exactly `size` characters."""
    return (unit * (size // len(unit) + 1))[:size]


def _spaced(*words: str, space: str = "\n") -> str:
    """`words` with long runs of `space` between them, SIZE characters in all."""
    gap = _fill(space, (SIZE - sum(map(len, words))) // (len(words) - 1))
    return gap.join(words)


def _halves(opening: str, closing: str) -> str:
    """SIZE characters of `opening` nested into `closing`: `((((…))))`."""
    return _fill(opening, SIZE // 2) + _fill(closing, SIZE // 2)


MIXED = " \n\t\r\f\v\u00a0\u2003"  # ASCII and Unicode whitespace, as `\s` reads it

HOSTILE: dict[str, str] = {
    # whitespace runs, alone and between words (what backtracking `\s*`, `\s+`, `.*?` feed on)
    "spaces": _fill(" "),
    "newlines": _fill("\n"),
    "tabs": _fill("\t"),
    "mixed whitespace": _fill(MIXED),
    "x spaces !": _spaced("x", "!", space=" "),
    "x mixed whitespace !": _spaced("x", "!", space=MIXED),
    "short words, long gaps": _fill("x" + " \n\t" * 50),
    "spaces x": _fill(" ", SIZE - 1) + "x",
    # the message of the issue, as it was sent and ten times the limit
    "how do you say (issue)": "how do you say x" + "\n" * 2000 + "in french" + "\n" * 2000 + "!",
    "how do you say": _spaced("how do you say x", "in french", "!"),
    "how do you say, mixed": _spaced("how do you say x", "in french", "!", space=MIXED),
    "how do you say, nothing": _spaced("how", "do", "you", "say", "!", space=" \t\n"),
    "what is the word for": _spaced("what", "is", "the", "word", "for", "x", "in", "french", "?", "!", space=" \n"),
    "translate !": _spaced("translate", "!"),
    "translate this !": _spaced("translate", "this", "!", space=" \n"),
    "translate this to": _spaced("please", "translate", "please", "this", "to", "x", "!", space=" \t"),
    "translate to french": _spaced("translate", "to", "french", ":", "x", "!"),
    "to french !": _spaced("to", "french", "!", space=" "),
    "in in in": _fill("in "),
    "in french in french": _fill("x in french ? "),
    "translate translate": _fill("translate this "),
    "how do you say x in": _fill("how do you say x in "),
    # letters and digits
    "aaaa": _fill("a"),
    "aaaa!": _fill("a", SIZE - 1) + "!",
    "a1a1!": _fill("a1", SIZE - 1) + "!",
    "digits": _fill("1"),
    "digits and spaces": _fill("1 "),
    "digits and dashes": _fill("1-"),
    "+1 ": _fill("+1 "),
    "(0": _fill("(0"),
    "IBAN-ish": "DE00" + _fill(" A", SIZE - 4),
    "A1": _fill("A1"),
    # quotes, brackets and backticks, nested and in runs
    "double quotes": _fill('"'),
    "single quotes": _fill("'"),
    "curly quotes": _halves("“‘«", "»’”"),  # noqa: RUF001 - typographic quotes are the point
    "backticks": _fill("`"),
    "fences": _fill("```"),
    "fence, then text": "```" + _fill("a"),
    "backtick pairs": _fill("` `\n"),
    "nested quotes": _halves("\"'`", "`'\""),
    "nested parentheses": _halves("(", ")"),
    "nested brackets": _halves("([{<", ">}])"),
    "open brackets": _fill("([{<"),
    # runs of markup characters
    "<@": _fill("<@"),
    "<@U1|": _fill("<@U1|"),
    "<@U": _fill("<@U"),
    "<#C1|": _fill("<#C1|"),
    "<!": _fill("<!"),
    "<@!1": _fill("<@!1"),
    ":": _fill(":"),
    ":a": _fill(":a"),
    "@": _fill("@"),
    ".": _fill("."),
    "-": _fill("-"),
    "_": _fill("_"),
    "#": _fill("#"),
    "|": _fill("|"),
    "!": _fill("!"),
    "?": _fill("?"),
    "*": _fill("*"),
    "/": _fill("/"),
    "&": _fill("&lt;"),
    "http://": _fill("http://"),
    "https://x": "https://" + _fill("x"),
    "placeholders": _fill("⟦1"),
    # e-mail-ish
    "a@a.a@a.a": _fill("a@a.a"),
    "a.a.a": _fill("a."),
    "a.a.a@": _fill("a.", SIZE - 1) + "@",
    "a@a.a.a": "a@" + _fill("a."),
    "a@": _fill("a@"),
    "a-a-a@a": _fill("a-", SIZE - 3) + "@a.",
    "a+.-": _fill("a+.-"),
    "long local part": _fill("a", SIZE - 6) + "@a.com",
    "a.a@a-a-a": _fill("a.", 64) + "@" + _fill("a-", SIZE - 65),
    # token-ish
    "xoxb-": _fill("xoxb-"),
    "Bearer": _fill("Bearer "),
    "Bot spaces": _spaced("Bot", "x", space=" "),
    "token parts": _fill("aaaaaaaaaaaaaaaaaaaaaaaa.aaaaaa."),
    "v1.": _fill("v1."),
    # document-shaped (knowledge-base ingestion: web pages are hostile too)
    "heading, spaces": "# a" + _fill(" ", SIZE - 4) + "b",
    "front matter, no end": "---" + _fill("\n", SIZE - 4) + "x",
    "---": _fill("---\n"),
    "\\n---": _fill("\n--- "),
    "headings": _fill("# "),
    "heading, blank lines": "#" + _fill(" \n"),
    "sentences": _fill(". "),
    "blank lines": _fill("\n \n"),
    # script runs (the knowledge base's tokenizer splits text at every change of script)
    "han": _fill("笔记"),
    "kana": _fill("ファイルを"),
    "han and latin": _fill("API笔记"),
    "latin and kana, no spaces": _fill("aア1"),
    "combining marks": _fill("e\u0301"),
    "underscores in words": _fill("a_"),
}


class _Overrun(Exception):
    pass


def _seconds(call: Callable[[], object]) -> float:
    """The CPU time `call` took; `inf` once it runs past STOP_AFTER (`re` checks for signals
    while it backtracks, so a runaway match is stopped there instead of hanging the test run)."""
    running = [True]

    def stop(signum: int, frame: object) -> None:
        if running[0]:
            raise _Overrun

    previous = signal.signal(signal.SIGVTALRM, stop)
    signal.setitimer(signal.ITIMER_VIRTUAL, STOP_AFTER)  # counts this process's CPU time
    started = time.thread_time()
    try:
        call()
        running[0] = False
        return time.thread_time() - started
    except _Overrun:
        return math.inf
    finally:
        running[0] = False
        signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        signal.signal(signal.SIGVTALRM, previous)


def _slow_calls(pattern: re.Pattern[str]) -> Iterator[str]:
    """The calls of `pattern` over hostile input that ran past the budget, as lines to show."""
    for label, text in HOSTILE.items():
        subject = text.encode() if isinstance(pattern.pattern, bytes) else text
        for op in ("search", "findall"):
            call = getattr(pattern, op)
            seconds = _seconds(functools.partial(call, subject))
            if BUDGET < seconds < math.inf:
                seconds = _seconds(functools.partial(call, subject))  # once more, in case the CPU was just shared
            if seconds > BUDGET:
                took = f"stopped after {STOP_AFTER:.1f} s" if seconds == math.inf else f"{seconds:.2f} s"
                yield f"{op}({label!r}, {len(text):,} chars): {took}"


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_pattern_runs_in_linear_time(name: str) -> None:
    slow = []
    for line in _slow_calls(PATTERNS[name]):
        slow.append(line)
        if len(slow) == SHOWN:
            break
    assert not slow, f"{name} = {PATTERNS[name].pattern!r} is over the {BUDGET} s budget on:\n" + "\n".join(slow)


def test_the_walk_finds_the_patterns() -> None:
    """The walk cannot silently find nothing: it finds many, including the ones that stalled the bot."""
    from adapters.discord import normalize as discord_normalize
    from adapters.slack import normalize as slack_normalize
    from bot.handlers import translate
    from bot.knowledge import base as kb
    from bot.knowledge import lexical
    from bot.moderation import moderator as moderation
    from bot.moderation import pii
    from bot.ops import logs
    from bot.routing import router as routing

    assert len(PATTERNS) >= 30, sorted(PATTERNS)
    known = [
        routing._HOW_SAY,
        routing._TO_LANG,
        routing._BARE,
        routing._LANG_PREFIX,
        routing._ANY_LANG,
        pii._EMAIL,
        pii._PHONE,
        moderation._Profanity.WORD,  # a class attribute
        translate.PROTECTED,
        translate.PLACEHOLDER,
        logs._TOKEN,
        kb._BLANK_LINE,
        kb._FRONT_MATTER,
        lexical._RUN,
        slack_normalize._USER_MENTION,
        discord_normalize._MENTION,
    ]
    found = {id(p) for p in PATTERNS.values()}
    assert [p.pattern for p in known if id(p) not in found] == []
