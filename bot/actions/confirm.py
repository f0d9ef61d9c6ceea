"""Write actions wait for the asker's yes: the pending call is kept in Redis, so the yes may
come after a restart or reach another replica, and is taken once.

A pending call has an id (the idempotency key: the call runs at most once under it), the
user who asked, the conversation, the action and its arguments. `take` is one Lua script:
it checks the user, deletes the call and leaves a tombstone saying what became of it, so a
second click (or a retry of the platform's event) learns "already done" instead of running
the call again, and a stranger's click changes nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from bot.errors import StoreUnavailable
from bot.store.redis import as_text
from bot.turns import ConversationKey, Turn

TOMBSTONE_SECONDS = 86_400  # how long "already done" is remembered after a decision

# KEYS: pending call, tombstone, the conversation's latest pointer. ARGV: user, decision, tombstone ttl.
_TAKE = """
local raw = redis.call('GET', KEYS[1])
if not raw then
  local done = redis.call('GET', KEYS[2])
  if done then return {'done', done} end
  return {'missing', ''}
end
if cjson.decode(raw)['user'] ~= ARGV[1] then return {'other', ''} end
redis.call('DEL', KEYS[1])
redis.call('SET', KEYS[2], ARGV[2], 'EX', tonumber(ARGV[3]))
if redis.call('GET', KEYS[3]) == cjson.decode(raw)['id'] then redis.call('DEL', KEYS[3]) end
return {'taken', raw}
"""


@dataclass(frozen=True, slots=True)
class Pending:
    id: str
    user: str
    conversation: str  # str(ConversationKey)
    action: str
    arguments: dict[str, Any]
    expires: float  # unix time


Decision = Literal["confirmed", "cancelled"]
# What `take` found: taken (the caller runs or cancels it), done (decided before: the
# tombstone's decision), other (someone else's), missing (expired or never was).
Found = Literal["taken", "done", "other", "missing"]


@dataclass(frozen=True, slots=True)
class Taken:
    found: Found
    pending: Pending | None = None
    before: str = ""  # the earlier decision, when found is "done"


class PendingCalls(Protocol):
    """Where write calls wait for a yes: `Confirmations` (Redis) or `MemoryConfirmations`."""

    ttl: int

    async def create(self, turn: Turn, action: str, arguments: dict[str, Any]) -> Pending: ...

    async def latest(self, key: ConversationKey, user: str) -> str | None: ...

    async def take(self, call_id: str, key: ConversationKey, user: str, decision: Decision) -> Taken: ...


def _new(turn: Turn, action: str, arguments: dict[str, Any], ttl: int) -> Pending:
    return Pending(
        id=secrets.token_hex(8),
        user=turn.user,
        conversation=str(turn.key),
        action=action,
        arguments=arguments,
        expires=time.time() + ttl,
    )


class Confirmations:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int) -> None:
        self._redis, self._prefix, self.ttl = redis, prefix, ttl
        self._take = redis.register_script(_TAKE)

    def _keys(self, call_id: str, key: ConversationKey, user: str) -> list[str]:
        # One conversation's hash tag in every key: the script's keys share a Cluster slot.
        base = f"{self._prefix}:action:{key.hash_tag}"
        return [f"{base}:pending:{call_id}", f"{base}:done:{call_id}", f"{base}:latest:{user}"]

    async def create(self, turn: Turn, action: str, arguments: dict[str, Any]) -> Pending:
        pending = _new(turn, action, arguments, self.ttl)
        pending_key, _, latest = self._keys(pending.id, turn.key, pending.user)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(pending_key, json.dumps(asdict(pending)), ex=self.ttl)
                pipe.set(latest, pending.id, ex=self.ttl)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"cannot keep the pending action: {type(exc).__name__}") from exc
        return pending

    async def latest(self, key: ConversationKey, user: str) -> str | None:
        """The id of the user's newest pending call in this conversation, if one still waits."""
        try:
            value = await self._redis.get(self._keys("-", key, user)[2])
        except RedisError as exc:
            raise StoreUnavailable(f"cannot read pending actions: {type(exc).__name__}") from exc
        return as_text(value) if value is not None else None

    async def take(self, call_id: str, key: ConversationKey, user: str, decision: Decision) -> Taken:
        """Claim the pending call `call_id` of conversation `key` for `user` with `decision`,
        exactly once. (A call id from another conversation is not found there.)"""
        try:
            found, raw = await self._take(keys=self._keys(call_id, key, user), args=[user, decision, TOMBSTONE_SECONDS])
        except RedisError as exc:
            raise StoreUnavailable(f"cannot take the pending action: {type(exc).__name__}") from exc
        found, raw = as_text(found), as_text(raw)
        if found == "taken":
            return Taken("taken", Pending(**json.loads(raw)))
        if found == "done":
            return Taken("done", before=raw)
        return Taken("other" if found == "other" else "missing")


class MemoryConfirmations:
    """The same rules in this process only, for a Parley run without Redis (`parley chat`)."""

    def __init__(self, *, ttl: int) -> None:
        self.ttl = ttl
        self._pending: dict[str, Pending] = {}
        self._done: dict[str, str] = {}
        self._latest: dict[tuple[str, str], str] = {}

    async def create(self, turn: Turn, action: str, arguments: dict[str, Any]) -> Pending:
        pending = _new(turn, action, arguments, self.ttl)
        self._pending[pending.id] = pending
        self._latest[(pending.conversation, pending.user)] = pending.id
        return pending

    async def latest(self, key: ConversationKey, user: str) -> str | None:
        call_id = self._latest.get((str(key), user))
        pending = self._pending.get(call_id or "")
        return call_id if pending is not None and pending.expires > time.time() else None

    async def take(self, call_id: str, key: ConversationKey, user: str, decision: Decision) -> Taken:
        pending = self._pending.get(call_id)
        if pending is None or pending.conversation != str(key) or pending.expires <= time.time():
            return Taken("done", before=self._done[call_id]) if call_id in self._done else Taken("missing")
        if pending.user != user:
            return Taken("other")
        del self._pending[call_id]
        self._done[call_id] = decision
        if self._latest.get((pending.conversation, user)) == call_id:
            del self._latest[(pending.conversation, user)]
        return Taken("taken", pending)
