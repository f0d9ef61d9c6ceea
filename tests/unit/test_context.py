import asyncio

from bot.config import ContextSettings, RedisSettings
from bot.llm.prompts import build_messages
from bot.store.context import Context, MemoryContextStore, Message, RedisContextStore, compact
from bot.turns import ConversationKey


def msgs(*tokens):
    return [Message("user" if i % 2 == 0 else "assistant", f"m{i}", t) for i, t in enumerate(tokens)]


def test_nothing_is_dropped_while_the_history_fits():
    assert compact(msgs(10, 10, 10), budget=100, target=0.5) == 0


def test_overflow_cuts_back_to_the_target_in_one_step_starting_at_a_user_message():
    history = msgs(30, 30, 30, 30, 30)  # 150 tokens, budget 120
    drop = compact(history, budget=120, target=0.5)
    kept = history[drop:]
    assert sum(m.tokens for m in kept) <= 60
    assert kept[0].role == "user"


def test_the_newest_message_is_kept_even_when_it_alone_is_over_budget():
    history = msgs(10, 10, 500)
    assert compact(history, budget=100, target=0.5) == 2


def test_prompt_is_stable_first_and_joins_consecutive_user_messages():
    ctx = Context((*msgs(1, 1), Message("user", "unanswered", 1)), summary="they talked about keys")
    messages = build_messages("SYSTEM", ctx, "new question")
    assert messages[0]["role"] == "system" and messages[0]["content"].startswith("SYSTEM")
    assert "they talked about keys" in messages[0]["content"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[-1]["content"] == "unanswered\n\nnew question"


def _store(redis, prefix, **context):
    return RedisContextStore(
        redis,
        redis_settings=RedisSettings(_env_file=None, prefix=prefix, context_ttl=context.pop("ttl", 3600)),
        settings=ContextSettings(_env_file=None, **context),
    )


KEY = ConversationKey("slack", "T1", "C1", "1700000000.000100")


async def test_redis_store_round_trip_with_hash_tagged_keys_and_ttl(redis):
    store = _store(redis, "ctx1")
    before = await store.load(KEY)
    assert before == Context()
    await store.save(KEY, before, [Message("user", "hi", 2), Message("assistant", "hello", 3)])
    loaded = await store.load(KEY)
    assert [(m.role, m.content, m.tokens) for m in loaded.messages] == [("user", "hi", 2), ("assistant", "hello", 3)]
    keys = sorted(k.decode() for k in await redis.keys("ctx1:*"))
    assert keys == ["ctx1:ctx:{slack:T1:C1:1700000000.000100}:msgs"]
    assert 0 < await redis.ttl(keys[0]) <= 3600


async def test_redis_store_applies_the_token_budget(redis):
    store = _store(redis, "ctx2", token_budget=100, compact_to=0.5)
    ctx = await store.load(KEY)
    for i in range(6):
        ctx = await store.save(KEY, ctx, [Message("user", f"q{i}", 20), Message("assistant", f"a{i}", 20)])
        assert ctx == await store.load(KEY)
        assert ctx.tokens <= 100
    assert ctx.messages[-1].content == "a5"


async def test_context_is_isolated_per_conversation_and_reset_forgets_it(redis):
    store = _store(redis, "ctx3")
    other = ConversationKey("slack", "T2", "C1", "1700000000.000100")  # same ids, other workspace
    await store.save(KEY, Context(), [Message("user", "mine", 1)])
    assert (await store.load(other)).messages == ()
    await store.reset(KEY)
    assert (await store.load(KEY)).messages == ()


async def test_context_expires_after_its_ttl(redis):
    store = _store(redis, "ctx4", ttl=1)
    await store.save(KEY, Context(), [Message("user", "short-lived", 1)])
    assert (await store.load(KEY)).messages
    await asyncio.sleep(2.1)
    assert (await store.load(KEY)).messages == ()


async def test_a_turn_is_answered_only_when_its_own_id_was_saved(redis):
    # Identity, not order: a taken-over turn that was saved is refused, and a turn with any
    # other id is saved, whatever number the inbox gave it.
    store = _store(redis, "ctx5")
    saved = await store.save(KEY, Context(), [Message("user", "q1", 1), Message("assistant", "a1", 1)], uid="turn-a")
    assert saved.answered == ("turn-a",) == (await store.load(KEY)).answered
    again = await store.save(KEY, saved, [Message("user", "q1", 1), Message("assistant", "a1 again", 1)], uid="turn-a")
    assert again == saved and len((await store.load(KEY)).messages) == 2
    await store.reset(KEY)
    after_reset = await store.load(KEY)
    assert after_reset.messages == () and after_reset.answered == ("turn-a",)  # a reset forgets history, not turns
    await store.save(KEY, after_reset, [Message("user", "q2", 1)], uid="turn-b")
    assert (await store.load(KEY)).answered == ("turn-b", "turn-a")


async def test_the_memory_store_decides_answered_turns_the_same_way():
    store = MemoryContextStore(redis_settings=RedisSettings(_env_file=None), settings=ContextSettings(_env_file=None))
    saved = await store.save(KEY, Context(), [Message("user", "q1", 1)], uid="turn-a")
    assert await store.save(KEY, saved, [Message("user", "q1", 1)], uid="turn-a") == saved
    assert (await store.load(KEY)).messages == saved.messages and saved.answered == ("turn-a",)
