"""Every sentence Parley says to a user, made in one place."""

from __future__ import annotations

from bot.errors import (
    EngineOverloaded,
    EngineRejected,
    EngineTimeout,
    EngineUnavailable,
    InputRejected,
    LLMError,
    ParleyError,
)

HELP = (
    "I'm Parley, a chat assistant. Mention me or message me directly and I'll answer in the thread.\n"
    "Commands: `help` shows this, `reset` makes me forget this conversation."
)
RESET_DONE = "Done: I've forgotten this conversation. The next message starts afresh."
BUSY = "I'm handling a lot of messages right now. Please try again in a minute."
EMPTY_ANSWER = "(The model returned an empty answer. Please try rephrasing.)"
NO_TEXT = "I can only read text for now. Please type your question as a message."
KB_DONT_KNOW = (
    "I don't know: I couldn't find anything about that in the knowledge base. "
    "Try rephrasing, or ask a person on the team."
)
TRANSLATION_SPANS_LOST = "\n\n_(Some code, links or mentions did not survive translation; here they are unchanged: {spans})_"
MODERATION_OUTPUT_WITHHELD = "\n\n_(The rest of this answer was withheld by moderation.)_"

_CATEGORY_WORDS = {
    "email": "an e-mail address",
    "phone": "a phone number",
    "card": "a card number",
    "iban": "a bank account number (IBAN)",
    "profanity": "offensive language",
    "prompt-injection": "an attempt to change my instructions",
}


def sources(lines: list[str]) -> str:
    """The citations under a knowledge-base answer."""
    return "\n\nSources:\n" + "\n".join(lines)


def already_in(language: str) -> str:
    return f"That text is already in {language}, so there is nothing to translate."


def moderation_refused(categories: tuple[str, ...]) -> str:
    """Why a message was refused, in a few words; never repeats the message."""
    words = [_CATEGORY_WORDS.get(c, f"content about {c}") for c in categories]
    personal = any(c in ("email", "phone", "card", "iban") for c in categories)
    advice = " Please don't share personal data here." if personal else " Please rephrase it."
    return f"I can't take that message: it contains {', '.join(dict.fromkeys(words))}.{advice}"


def for_user(exc: BaseException) -> str:
    """The short, clear sentence a user sees for an error. Never includes secrets or internals."""
    match exc:
        case InputRejected(reason="empty"):
            return "Your message was empty. Type a question and I'll answer it."
        case InputRejected(reason="too_long"):
            return (
                f"Your message is too long for me ({exc.length:,} characters; the limit is "
                f"{exc.limit:,}). Please shorten it or split it up."
            )
        case InputRejected(reason="invalid_utf8"):
            return "Your message contains bytes that aren't valid text (UTF-8). Please resend it as plain text."
        case InputRejected():
            return "I couldn't read that message. Please rephrase it."
        case EngineTimeout():
            return "Sorry, the language model took too long to answer. Please try again."
        case EngineUnavailable():
            return "Sorry, the language model is unavailable right now. Please try again in a minute."
        case EngineOverloaded():
            return BUSY
        case EngineRejected():
            return "Sorry, the language model couldn't process that message (it may be too long)."
        case LLMError():
            return "Sorry, something went wrong while generating the answer. Please try again."
        case ParleyError():
            return "Sorry, something went wrong on my side. Please try again."
        case _:
            return "Sorry, something unexpected went wrong. The team has been notified in the logs."


def interrupted(exc: BaseException) -> str:
    """Appended to an answer whose stream broke after it had started."""
    return f"\n\n_({for_user(exc)})_"
