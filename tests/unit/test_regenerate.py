"""A question asked again in place of its answer (a Regenerate button): the history logic against
a real Redis, and the stage that gives a regenerating turn its view of the history.

When the regenerated turn is still the conversation's last exchange, its exchange is replaced
(one user message and one answer for the question); when the conversation has moved on, the
history is not rewritten and the question is saved again at its end (`bot.dialogue.regenerate`)."""

from __future__ import annotations

import logging
import uuid

import pytest

from bot.config import ContextSettings, RedisSettings
from bot.dialogue.regenerate import Regenerate
from bot.dialogue.stages import TurnState
from bot.llm.client import CallScope
from bot.store.context import Context, MemoryContextStore, Message, RedisContextStore
from bot.tenants import TenantConfig
from bot.turns import ConversationKey, Turn

KEY = ConversationKey("discord", "G1", "C1", "111")


def exchange(question: str, answer: str | None) -> list[Message]:
    return [Message("user", question, 5)] + ([Message("assistant", answer, 7)] if answer is not None else [])


def contents(context: Context) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in context.messages]


@pytest.fixture
def store(redis) -> RedisContextStore:
    return RedisContextStore(
        redis,
        redis_settings=RedisSettings(_env_file=None, prefix=f"regen{uuid.uuid4().hex[:8]}", context_ttl=3600),
        settings=ContextSettings(_env_file=None),
    )


async def saved(store: RedisContextStore, *turns: tuple[str, str, str | None]) -> Context:
    """The history once each (uid, question, answer) has been saved in turn, as the dialogue saves them."""
    for uid, question, answer in turns:
        await store.save(KEY, await store.load(KEY), exchange(question, answer), uid=uid)
    return await store.load(KEY)


async def test_regenerating_the_last_exchange_replaces_it(store: RedisContextStore) -> None:
    before = await saved(store, ("t1", "Hi", "Hello!"), ("t2", "When are you open?", "Nine to five."))
    rewound = before.rewound("t2")
    assert rewound is not None and contents(rewound) == [("user", "Hi"), ("assistant", "Hello!")]
    assert (rewound.replaces, rewound.cut) == ("t2", 2)

    after = await store.save(KEY, rewound, exchange("When are you open?", "From nine until five."), uid="t3")
    stored = await store.load(KEY)
    assert (
        contents(stored)
        == contents(after)
        == [
            ("user", "Hi"),
            ("assistant", "Hello!"),
            ("user", "When are you open?"),
            ("assistant", "From nine until five."),
        ]
    )
    assert stored.answered == ("t3", "t2", "t1"), "the replaced turn stays answered: never answered twice"

    # And again, on the new answer: still one exchange for the question.
    again = stored.rewound("t3")
    assert again is not None
    await store.save(KEY, again, exchange("When are you open?", "9 to 5."), uid="t4")
    assert contents(await store.load(KEY))[2:] == [("user", "When are you open?"), ("assistant", "9 to 5.")]


async def test_a_failed_answer_saved_the_question_alone_and_only_that_is_replaced(store: RedisContextStore) -> None:
    before = await saved(store, ("t1", "Hi", "Hello!"), ("t2", "When are you open?", None))
    rewound = before.rewound("t2")
    assert rewound is not None and rewound.cut == 1
    await store.save(KEY, rewound, exchange("When are you open?", "Nine to five."), uid="t3")
    assert [m.role for m in (await store.load(KEY)).messages] == ["user", "assistant", "user", "assistant"]


async def test_the_only_exchange_is_replaced_whole(store: RedisContextStore) -> None:
    before = await saved(store, ("t1", "When are you open?", "Nine to five."))
    rewound = before.rewound("t1")
    assert rewound is not None and rewound.messages == ()
    await store.save(KEY, rewound, exchange("When are you open?", "From nine."), uid="t2")
    assert contents(await store.load(KEY)) == [("user", "When are you open?"), ("assistant", "From nine.")]


async def test_a_conversation_that_moved_on_or_was_reset_is_not_rewritten(store: RedisContextStore) -> None:
    moved_on = await saved(store, ("t1", "When are you open?", "Nine to five."), ("t2", "And Sundays?", "Closed."))
    assert moved_on.rewound("t1") is None, "a later turn was saved: t1's exchange is not the last"
    assert moved_on.rewound("") is None and moved_on.rewound("unknown") is None
    await store.reset(KEY)
    reset = await store.load(KEY)
    assert reset.answered[0] == "t2" and reset.rewound("t2") is None, "reset: there is no exchange left to replace"


async def test_a_turn_saved_between_the_load_and_the_save_is_kept(
    store: RedisContextStore, caplog: pytest.LogCaptureFixture
) -> None:
    """One that went on without waiting (the inbox's order timeout): the exchange to replace is no
    longer the last, so the new one is appended, and what is stored is returned."""
    before = await saved(store, ("t1", "When are you open?", "Nine to five."))
    rewound = before.rewound("t1")
    assert rewound is not None
    await saved(store, ("t2", "And Sundays?", "Closed."))
    after = await store.save(KEY, rewound, exchange("When are you open?", "From nine."), uid="t3")
    assert (
        contents(after)
        == contents(await store.load(KEY))
        == [
            ("user", "When are you open?"),
            ("assistant", "Nine to five."),
            ("user", "And Sundays?"),
            ("assistant", "Closed."),
            ("user", "When are you open?"),
            ("assistant", "From nine."),
        ]
    )
    assert "no longer the last; appended instead" in caplog.text


async def test_when_compaction_kept_only_the_answer_all_that_is_left_goes(redis) -> None:
    store = RedisContextStore(
        redis,
        redis_settings=RedisSettings(_env_file=None, prefix=f"regen{uuid.uuid4().hex[:8]}"),
        settings=ContextSettings(_env_file=None, token_budget=100, compact_to=0.5),
    )
    await store.save(KEY, Context(), [Message("user", "x" * 400, 150), Message("assistant", "long", 10)], uid="t1")
    before = await store.load(KEY)
    assert contents(before) == [("assistant", "long")]
    rewound = before.rewound("t1")
    assert rewound is not None and rewound.messages == () and rewound.cut == 1
    await store.save(KEY, rewound, exchange("short", "answer"), uid="t2")
    assert contents(await store.load(KEY)) == [("user", "short"), ("assistant", "answer")]


async def test_the_memory_store_replaces_the_same_way() -> None:
    store = MemoryContextStore(redis_settings=RedisSettings(_env_file=None), settings=ContextSettings(_env_file=None))
    await store.save(KEY, Context(), exchange("When are you open?", "Nine to five."), uid="t1")
    rewound = (await store.load(KEY)).rewound("t1")
    assert rewound is not None
    await store.save(KEY, rewound, exchange("When are you open?", "From nine."), uid="t2")
    assert contents(await store.load(KEY)) == [("user", "When are you open?"), ("assistant", "From nine.")]


class NoSink:
    """The stage never speaks: it only decides what history the turn sees."""


def state(context: Context, regenerates: str) -> TurnState:
    turn = Turn.of(KEY, user="u1", text="When are you open?", event_id="e9", uid="t9", regenerates=regenerates)
    return TurnState(turn, NoSink(), CallScope(), TenantConfig(), context=context)  # type: ignore[arg-type]


async def test_the_stage_rewinds_only_a_regenerating_turn_of_the_last_exchange(
    store: RedisContextStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    loaded = await saved(store, ("t1", "Hi", "Hello!"), ("t2", "When are you open?", "Nine to five."))
    plain, last, earlier = state(loaded, ""), state(loaded, "t2"), state(loaded, "t1")
    for each in (plain, last, earlier):
        assert await Regenerate()(each) is None, "the stage never ends a turn"
    assert plain.context is loaded and earlier.context is loaded
    assert contents(last.context) == [("user", "Hi"), ("assistant", "Hello!")] and last.context.replaces == "t2"
    assert "its 2 messages are replaced" in caplog.text
    assert "the conversation has moved on from (turn t1): asked anew at its end" in caplog.text
