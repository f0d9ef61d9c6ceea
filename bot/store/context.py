"""Conversation context: the history a prompt is built from, kept in Redis.

Layout per conversation (the `{...}` hash tag keeps them in one Redis Cluster slot):

    {prefix}:ctx:{platform:tenant:channel:thread}:msgs     list of JSON [role, content, tokens]
    {prefix}:ctx:{platform:tenant:channel:thread}:summary  string
    {prefix}:ctx:{platform:tenant:channel:thread}:turns    list of the ids (`Turn.uid`) of the last saved turns

A load is one round trip (LRANGE + GET in a pipeline), a save is one round trip
(RPUSH, LTRIM, LPUSH, EXPIRE in one script). The turn id written with the history
makes a turn's save and its "answered" mark one atomic step: a turn taken over from
a worker that died after saving is recognised as answered and not answered twice.
"Answered" is decided by that id alone, never by comparing sequence numbers: the
inbox's numbering of a conversation can start again (its keys expired, the shards
were re-cut, a failover lost writes), and a number compared against an older mark
would silently swallow the turns of a returning user. The history is bounded by a token
budget; when it overflows it is cut back to `compact_to` of the budget in one
step, so the start of the prompt (and so vLLM's prefix cache) stays the same for
several turns instead of shifting on every turn as a sliding window would.

A regenerated answer (`Turn.regenerates`) replaces its turn's exchange instead of following it:
`Context.rewound` is the history without that exchange, and its save drops the exchange and
appends the new one in the same script, provided the turn is still the last one saved there
(the id at the head of `:turns`). Else the new exchange is appended, as any turn's is.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.config import ContextSettings, RedisSettings
from bot.errors import StoreUnavailable
from bot.store.batching import RedisBatcher
from bot.turns import ConversationKey

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Message:
    role: str  # user | assistant
    content: str
    tokens: int


def estimate_tokens(text: str) -> int:
    """~4 characters a token for English text: for when the engine's count is not at hand."""
    return len(text) // 4 + 1


@dataclass(frozen=True, slots=True)
class Context:
    """A conversation's history, oldest first, and the summary of what was folded away.
    `replaces` and `cut` are set by `rewound` alone: a save of the context drops the `cut` newest
    messages stored (turn `replaces`'s exchange) before it appends, as `messages` already has."""

    messages: tuple[Message, ...] = ()
    summary: str = ""
    answered: tuple[str, ...] = ()  # ids of the last turns saved, newest first (`Turn.uid`)
    replaces: str = ""
    cut: int = 0

    @property
    def tokens(self) -> int:
        return sum(m.tokens for m in self.messages)

    def rewound(self, uid: str) -> Context | None:
        """The history without turn `uid`'s exchange, for a turn that answers its question again
        in its place (a Regenerate button): None unless `uid` is the last turn saved and the
        history still ends with its exchange (not after a reset).

        The exchange is the history's end from its last user message on: the question and its
        answer (or the question alone, when answering it failed). When the question alone was over
        the token budget, compaction kept only the answer: then all that is left goes."""
        if not uid or self.answered[:1] != (uid,) or not self.messages:
            return None
        asked = [i for i, m in enumerate(self.messages) if m.role == "user"]
        start = asked[-1] if asked else 0
        return replace(self, messages=self.messages[:start], replaces=uid, cut=len(self.messages) - start)


def compact(messages: Sequence[Message], budget: int, target: float) -> int:
    """How many of the oldest messages to drop so the history fits the budget.

    Nothing is dropped while the history fits. Once it does not, the oldest messages
    go until what is left fits `target * budget`, and the cut never leaves an
    assistant message first. This is where a rolling summary will come in: the
    dropped messages are exactly what a summariser would fold into `Context.summary`.
    """
    total = sum(m.tokens for m in messages)
    if total <= budget:
        return 0
    goal = int(budget * target)
    drop = 0
    while drop < len(messages) and (total > goal or messages[drop].role != "user"):
        total -= messages[drop].tokens
        drop += 1
    # Never drop the newest message, even when it alone is over the budget.
    return min(drop, max(len(messages) - 1, 0))


class ContextStore(Protocol):
    async def load(self, key: ConversationKey) -> Context: ...

    async def save(self, key: ConversationKey, before: Context, new: Sequence[Message], *, uid: str = "") -> Context:
        """Append `new` to the history `before` was loaded as (to what is left of it when it was
        `rewound`), marking turn `uid` answered (when given; a turn already marked is not saved
        twice); returns the history now stored."""
        ...

    async def reset(self, key: ConversationKey) -> None: ...


# How many turn ids a conversation remembers. Turns are saved in order, so a turn taken over
# after its save is among the newest; the rest is headroom for turns that went on without
# waiting (the inbox's order timeout).
ANSWERED_KEPT = 32

# KEYS: msgs, summary, turns. ARGV: uid, ttl, how many of the oldest to drop, the turn whose
# exchange is replaced ("" for none), how many of the newest messages that exchange has, new
# messages... One atomic step; a turn whose id is already in the list is refused (0). The replaced
# exchange goes only while its turn is still the last saved; else the new messages are appended
# all the same (2). Every key of the conversation gets the same lifetime in the same step.
_SAVE = f"""
local uid = ARGV[1]
if uid ~= '' then
  for _, seen in ipairs(redis.call('LRANGE', KEYS[3], 0, -1)) do
    if seen == uid then return 0 end
  end
end
local saved = 1
local cut = tonumber(ARGV[5])
if cut > 0 then
  if redis.call('LINDEX', KEYS[3], 0) == ARGV[4] then
    redis.call('LTRIM', KEYS[1], 0, -cut - 1)
  else
    saved = 2
  end
end
if #ARGV > 5 then redis.call('RPUSH', KEYS[1], unpack(ARGV, 6)) end
if tonumber(ARGV[3]) > 0 then redis.call('LTRIM', KEYS[1], ARGV[3], -1) end
if uid ~= '' then
  redis.call('LPUSH', KEYS[3], uid)
  redis.call('LTRIM', KEYS[3], 0, {ANSWERED_KEPT - 1})
end
for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ARGV[2]) end
return saved
"""


def _marked(answered: tuple[str, ...], uid: str) -> tuple[str, ...]:
    return (uid, *answered)[:ANSWERED_KEPT] if uid else answered


class RedisContextStore:
    """`batcher` sends the store's commands together with other callers' (the dedupe claims
    issued beside the loads): the runtime shares one; by default the store has its own."""

    def __init__(
        self,
        redis: Redis,
        *,
        redis_settings: RedisSettings,
        settings: ContextSettings,
        batcher: RedisBatcher | None = None,
    ) -> None:
        self._redis = redis
        self._batch = batcher or RedisBatcher(redis)
        self._prefix = redis_settings.prefix
        self._ttl = redis_settings.context_ttl
        self._budget = settings.token_budget
        self._target = settings.compact_to

    def _keys(self, key: ConversationKey) -> tuple[str, str, str]:
        base = f"{self._prefix}:ctx:{key.hash_tag}"
        return f"{base}:msgs", f"{base}:summary", f"{base}:turns"

    async def load(self, key: ConversationKey) -> Context:
        msgs_key, summary_key, turns_key = self._keys(key)
        try:
            raw, summary, answered = await self._batch.execute(
                ("LRANGE", msgs_key, 0, -1), ("GET", summary_key), ("LRANGE", turns_key, 0, -1)
            )
        except RedisError as exc:
            raise StoreUnavailable(f"context load failed: {exc}") from exc
        messages = tuple(Message(*json.loads(item)) for item in raw)
        return Context(messages, (summary or b"").decode(), tuple(uid.decode() for uid in answered))

    async def save(self, key: ConversationKey, before: Context, new: Sequence[Message], *, uid: str = "") -> Context:
        msgs_key, summary_key, turns_key = self._keys(key)
        messages = (*before.messages, *new)
        drop = compact(messages, self._budget, self._target)
        after = Context(messages[drop:], before.summary, _marked(before.answered, uid))
        try:
            [saved] = await self._batch.execute(
                (
                    "EVAL",
                    _SAVE,
                    3,
                    msgs_key,
                    summary_key,
                    turns_key,
                    uid,
                    self._ttl,
                    drop,
                    before.replaces,
                    before.cut,
                    *(json.dumps([m.role, m.content, m.tokens]) for m in new),
                )
            )
        except RedisError as exc:
            raise StoreUnavailable(f"context save failed: {exc}") from exc
        if not saved:
            # Only a worker that stalled past the inbox's visibility timeout gets here: the turn
            # was taken over and saved by another worker, whose copy stands.
            log.warning("turn %s of %s was already saved by another worker; this copy is dropped", uid, key)
            return before
        if saved == 2:
            # A turn saved between this one's load and its save (one that went on without waiting
            # for it, past the inbox's order timeout): the exchange to replace is no longer the last.
            log.warning(
                "turn %s of %s: the exchange it answers again is no longer the last; appended instead", uid, key
            )
            return await self.load(key)
        return after

    async def reset(self, key: ConversationKey) -> None:
        try:
            await self._redis.delete(*self._keys(key)[:2])  # the turn ids stay: they are about turns, not history
        except RedisError as exc:
            raise StoreUnavailable(f"context reset failed: {exc}") from exc


class MemoryContextStore:
    """The same behaviour in process memory, for `parley chat` with no Redis configured.

    Bounded like the Redis store (token budget per conversation, TTL); it exists for
    the embedded default only, never for a deployment.
    """

    def __init__(self, *, redis_settings: RedisSettings, settings: ContextSettings) -> None:
        self._data: dict[ConversationKey, tuple[float, Context]] = {}
        self._ttl = redis_settings.context_ttl
        self._budget = settings.token_budget
        self._target = settings.compact_to

    async def load(self, key: ConversationKey) -> Context:
        expires, ctx = self._data.get(key, (0.0, Context()))
        return ctx if expires > time.monotonic() else Context()

    async def save(self, key: ConversationKey, before: Context, new: Sequence[Message], *, uid: str = "") -> Context:
        stored = await self.load(key)
        if uid and uid in stored.answered:
            return before
        # A `rewound` context has left its replaced exchange out already (in process, a
        # conversation's turns run one at a time: nothing is saved between its load and its save).
        messages = (*before.messages, *new)
        after = Context(
            messages[compact(messages, self._budget, self._target) :], before.summary, _marked(stored.answered, uid)
        )
        self._data[key] = (time.monotonic() + self._ttl, after)
        return after

    async def reset(self, key: ConversationKey) -> None:
        if key in self._data:
            expires, ctx = self._data[key]
            self._data[key] = (expires, Context(answered=ctx.answered))
