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
