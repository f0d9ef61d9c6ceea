"""What `parley report` reads: per tenant and UTC day, answers, handoffs, conversations that
needed no person, and 👍/👎 — plus the votes themselves and the index from a platform's
message id back to the answer it shows.

Layout in Redis (every key starts with the configured prefix):

    {prefix}:stats:tenants                         set of tenants that have counters
    {prefix}:stats:{tenant}:{day}                  hash: answers, handoffs, resolved, up, down
    {prefix}:stats:{tenant}:{day}:conversations    HyperLogLog of conversations with an answer or a handoff
    {prefix}:stats:{tenant}:{day}:handed           HyperLogLog of conversations handed to a person
    {prefix}:answers:{conversation}                hash: answered turn's event id -> day (which answers exist)
    {prefix}:votes:{conversation}                  hash: "{answer}:{user}" -> JSON vote (the vote with its answer)
    {prefix}:answer:{platform}:{tenant}:{message}  JSON [platform, tenant, channel, thread, event id]

Counters are a hash per tenant and day (HINCRBY: one round trip, bounded by days, not
by traffic). Conversations are counted with HyperLogLogs: a set per day would grow with
every conversation for the whole year the counters are kept, a HyperLogLog stays at
12 kB at most and is exact for small counts (standard error 0.81 % for large ones).
Per-conversation keys carry the conversation's hash tag and expire with its context.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from bot.ops.writebehind import WriteBehind
from bot.store.redis import as_text, store_errors
from bot.turns import FEEDBACK, ConversationKey, Turn

log = logging.getLogger(__name__)

STATS_TTL = 400 * 24 * 3600  # a year of daily figures, and a month to spare
COUNTERS = ("answers", "handoffs", "resolved", "up", "down", "actions", "action_failures")
CONVERSATION_COUNTERS = ("answers", "handoffs")  # the turns that make a conversation count for its day


def day_of(at: float | None = None) -> str:
    """The UTC day (YYYY-MM-DD) a moment falls on: the report's unit."""
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).date().isoformat()


@dataclass(frozen=True, slots=True)
class DayStats:
    """One tenant's figures for one UTC day. `handed_conversations` were handed to a person
    at least once; the rest of `conversations` were served by the bot alone."""

    tenant: str
    day: str
    answers: int = 0
    handoffs: int = 0
    resolved: int = 0  # handed back to the bot by a person
    up: int = 0
    down: int = 0
    conversations: int = 0
    handed_conversations: int = 0
    actions: int = 0  # action calls that ran
    action_failures: int = 0  # refused (invalid arguments), failed or timed out

    @property
    def without_human(self) -> int:
        return max(self.conversations - self.handed_conversations, 0)

    @property
    def without_human_share(self) -> float | None:
        return self.without_human / self.conversations if self.conversations else None

    def to_dict(self) -> dict[str, object]:
        share = self.without_human_share
        return {
            "tenant": self.tenant,
            "day": self.day,
            "answers": self.answers,
            "handoffs": self.handoffs,
            "resolved_by_person": self.resolved,
            "conversations": self.conversations,
            "without_human": self.without_human,
            "without_human_percent": round(share * 100, 1) if share is not None else None,
            "up": self.up,
            "down": self.down,
            "actions": self.actions,
            "action_failures": self.action_failures,
        }


class Stats(Protocol):
    async def answered(self, turn: Turn) -> None:
        """An answer was delivered: count it, and remember it so that a vote on it is accepted."""
        ...

    async def handed_off(self, turn: Turn) -> None: ...

    async def resolved(self, turn: Turn) -> None: ...

    async def acted(self, turn: Turn, ok: bool) -> None:
        """An action call ended: it ran (`ok`), or it was refused, failed or timed out."""
        ...

    async def vote(self, turn: Turn, answer: str, vote: str) -> str:
        """Store `turn.user`'s vote on `answer` (an answered turn's event id). Returns "new",
        "changed", "same" (nothing to do) or "unknown" (no such answer in this conversation)."""
        ...

    async def days(self, *, days: int, tenant: str | None = None, today: date | None = None) -> list[DayStats]:
        """The last `days` UTC days up to `today`, for `tenant` or every tenant, oldest first."""
        ...


def day_range(days: int, today: date | None) -> list[str]:
    """The last `days` UTC days up to `today` (default: today), oldest first."""
    end = today or datetime.now(UTC).date()
    return [(end - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]


class RedisStats:
    """Answers, handoffs and action calls are counted behind the turns (`WriteBehind`: one
    pipeline `FLUSH_DELAY` after the first). Readers in this process (`days`, `vote`) write the
    buffer first; `aclose` writes what is left. A vote on an answer that another replica
    handled less than `FLUSH_DELAY` ago is not yet known there: no person reacts that fast."""

    def __init__(self, redis: Redis, *, prefix: str, conversation_ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = conversation_ttl
        self._counts: WriteBehind[tuple[Turn, str, str]] = WriteBehind(self._write, what="figures")

    async def flush(self) -> None:
        await self._counts.flush()

    async def aclose(self) -> None:
        await self._counts.aclose()

    def _day(self, tenant: str, day: str) -> str:
        return f"{self._prefix}:stats:{tenant}:{day}"

    def _count(self, turn: Turn, counter: str) -> None:
        self._counts.add((turn, counter, day_of()))

    async def _write(self, pending: list[tuple[Turn, str, str]]) -> None:
        """(turn, counter, day) counts, in one pipeline."""
        counts: Counter[tuple[str, str]] = Counter()
        conversations: defaultdict[str, set[str]] = defaultdict(set)
        answers: defaultdict[str, dict[FieldT, EncodableT]] = defaultdict(dict)
        for turn, counter, day in pending:
            key = self._day(turn.tenant, day)
            counts[key, counter] += 1
            if counter in CONVERSATION_COUNTERS:
                conversations[f"{key}:conversations"].add(str(turn.key))
            if counter == "handoffs":
                conversations[f"{key}:handed"].add(str(turn.key))
            elif counter == "answers":
                answers[f"{self._prefix}:answers:{turn.key.hash_tag}"][turn.event_id] = day
        with store_errors(f"stats update failed ({len(pending)} counts lost)"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(f"{self._prefix}:stats:tenants", *{turn.tenant for turn, _, _ in pending})
                for (key, counter), n in counts.items():
                    pipe.hincrby(key, counter, n)
                for key in {key for key, _ in counts}:
                    pipe.expire(key, STATS_TTL)
                for key, members in conversations.items():
                    pipe.pfadd(key, *members)
                    pipe.expire(key, STATS_TTL)
                for key, fields in answers.items():
                    pipe.hset(key, mapping=fields)
                    pipe.expire(key, self._ttl)
                await pipe.execute()

    async def answered(self, turn: Turn) -> None:
        self._count(turn, "answers")

    async def handed_off(self, turn: Turn) -> None:
        self._count(turn, "handoffs")

    async def acted(self, turn: Turn, ok: bool) -> None:
        self._count(turn, "actions" if ok else "action_failures")

    async def resolved(self, turn: Turn) -> None:
        day = self._day(turn.tenant, day_of())
        with store_errors("stats update failed"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(f"{self._prefix}:stats:tenants", turn.tenant)
                pipe.hincrby(day, "resolved", 1)
                pipe.expire(day, STATS_TTL)
                await pipe.execute()

    async def vote(self, turn: Turn, answer: str, vote: str) -> str:
        answers = f"{self._prefix}:answers:{turn.key.hash_tag}"
        votes = f"{self._prefix}:votes:{turn.key.hash_tag}"
        field_ = f"{answer}:{turn.user}"
        await self.flush()  # the answer voted on may still be in the buffer
        with store_errors("storing a vote failed"):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hexists(answers, answer)
                pipe.hget(votes, field_)
                known, before = await pipe.execute()
            if not known:
                return "unknown"
            previous = json.loads(before) if before else None
            if previous is not None and previous["vote"] == vote:
                return "same"
            today = day_of()
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.sadd(f"{self._prefix}:stats:tenants", turn.tenant)
                pipe.hset(
                    votes,
                    field_,
                    json.dumps(
                        {"vote": vote, "user": turn.user, "answer": answer, "day": today, "conversation": str(turn.key)}
                    ),
                )
                pipe.expire(votes, self._ttl)
                pipe.hincrby(self._day(turn.tenant, today), vote, 1)
                pipe.expire(self._day(turn.tenant, today), STATS_TTL)
                if previous is not None:  # a changed vote moves, it does not count twice
                    pipe.hincrby(self._day(turn.tenant, previous["day"]), previous["vote"], -1)
                await pipe.execute()
        return "new" if previous is None else "changed"

    async def days(self, *, days: int, tenant: str | None = None, today: date | None = None) -> list[DayStats]:
        await self.flush()
        with store_errors("reading stats failed"):
            if tenant is not None:
                tenants = [tenant]
            else:
                tenants = sorted(as_text(t) for t in await self._redis.smembers(f"{self._prefix}:stats:tenants"))
            keys = [(t, d) for t in tenants for d in day_range(days, today)]
            async with self._redis.pipeline(transaction=False) as pipe:
                for t, d in keys:
                    key = self._day(t, d)
                    pipe.hgetall(key)
                    pipe.pfcount(f"{key}:conversations")
                    pipe.pfcount(f"{key}:handed")
                raw = await pipe.execute()
        out = []
        for i, (t, d) in enumerate(keys):
            counters, conversations, handed = raw[3 * i : 3 * i + 3]
            values = {k.decode(): int(v) for k, v in counters.items()}
            if values or conversations:
                out.append(
                    DayStats(
                        t,
                        d,
                        **{c: values.get(c, 0) for c in COUNTERS},
                        conversations=conversations,
                        handed_conversations=handed,
                    )
                )
        return out


@dataclass
class _Day:
    counters: dict[str, int] = field(default_factory=dict)
    conversations: set[str] = field(default_factory=set)
    handed: set[str] = field(default_factory=set)


class MemoryStats:
    """The same in process memory, for `parley chat` without Redis (nothing to report afterwards,
    but votes and counts behave the same while it runs). Bounded: answers per conversation
    and conversations per day are capped."""

    MAX = 100_000

    def __init__(self) -> None:
        self._days: dict[tuple[str, str], _Day] = {}
        self._answers: OrderedDict[tuple[ConversationKey, str], str] = OrderedDict()
        self._votes: dict[tuple[ConversationKey, str, str], tuple[str, str]] = {}

    def _count(self, turn: Turn, counter: str) -> None:
        day = self._days.setdefault((turn.tenant, day_of()), _Day())
        day.counters[counter] = day.counters.get(counter, 0) + 1
        if counter in CONVERSATION_COUNTERS and len(day.conversations) < self.MAX:
            day.conversations.add(str(turn.key))
            if counter == "handoffs":
                day.handed.add(str(turn.key))

    async def answered(self, turn: Turn) -> None:
        self._count(turn, "answers")
        self._answers[(turn.key, turn.event_id)] = day_of()
        while len(self._answers) > self.MAX:
            self._answers.popitem(last=False)

    async def handed_off(self, turn: Turn) -> None:
        self._count(turn, "handoffs")

    async def acted(self, turn: Turn, ok: bool) -> None:
        self._count(turn, "actions" if ok else "action_failures")

    async def resolved(self, turn: Turn) -> None:
        day = self._days.setdefault((turn.tenant, day_of()), _Day())
        day.counters["resolved"] = day.counters.get("resolved", 0) + 1

    async def vote(self, turn: Turn, answer: str, vote: str) -> str:
        if (turn.key, answer) not in self._answers:
            return "unknown"
        previous = self._votes.get((turn.key, answer, turn.user))
        if previous is not None and previous[0] == vote:
            return "same"
        today = day_of()
        self._votes[(turn.key, answer, turn.user)] = (vote, today)
        day = self._days.setdefault((turn.tenant, today), _Day())
        day.counters[vote] = day.counters.get(vote, 0) + 1
        if previous is not None:
            old = self._days[(turn.tenant, previous[1])]
            old.counters[previous[0]] -= 1
        return "new" if previous is None else "changed"

    async def days(self, *, days: int, tenant: str | None = None, today: date | None = None) -> list[DayStats]:
        wanted = day_range(days, today)
        tenants = sorted({t for t, _ in self._days} if tenant is None else {tenant})
        out = []
        for t in tenants:
            for d in wanted:
                if (found := self._days.get((t, d))) is not None:
                    out.append(
                        DayStats(
                            t,
                            d,
                            **{c: found.counters.get(c, 0) for c in COUNTERS},
                            conversations=len(found.conversations),
                            handed_conversations=len(found.handed),
                        )
                    )
        return out


# -- from a platform message back to the answer it shows --------------------------------------


@dataclass(frozen=True, slots=True)
class AnsweredIn:
    """Which conversation a message of Parley's belongs to, and the turn it answered."""

    key: ConversationKey
    event_id: str

    def vote(self, *, user: str, vote: str, event_id: str, address: Mapping[str, str] = {}) -> Turn:
        """The `feedback` turn of a vote on this answer, in the answer's conversation."""
        return Turn.of(
            self.key,
            user=user,
            text=vote,
            event_id=event_id,
            command=FEEDBACK,
            reply_to=self.event_id,
            address=dict(address),
        )


class AnswerIndex(Protocol):
    """Reactions name a platform message (a Slack ts, a Discord message id); votes are kept per
    answered turn. Sinks remember each message they post, reaction handlers look it up."""

    async def remember(self, message: str, turn: Turn) -> None:
        """`message` (unique within the turn's platform and tenant) shows the answer to `turn`.
        Never raises: a lost entry only means a later reaction on it is ignored."""
        ...

    async def find(self, platform: str, tenant: str, message: str) -> AnsweredIn | None: ...


class RedisAnswerIndex:
    def __init__(self, redis: Redis, *, prefix: str, ttl: int) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl = ttl

    def _key(self, platform: str, tenant: str, message: str) -> str:
        return f"{self._prefix}:answer:{platform}:{tenant}:{message}"

    async def remember(self, message: str, turn: Turn) -> None:
        key = turn.key
        value = json.dumps([key.platform, key.tenant, key.channel, key.thread, turn.event_id])
        try:
            await self._redis.set(self._key(turn.platform, turn.tenant, message), value, ex=self._ttl)
        except RedisError as exc:
            log.warning("could not remember answer message %s (a reaction on it will be ignored): %s", message, exc)

    async def find(self, platform: str, tenant: str, message: str) -> AnsweredIn | None:
        with store_errors("answer look-up failed"):
            raw = await self._redis.get(self._key(platform, tenant, message))
        if raw is None:
            return None
        p, t, c, th, event_id = json.loads(raw)
        return AnsweredIn(ConversationKey(p, t, c, th), event_id)


class MemoryAnswerIndex:
    def __init__(self, *, max_entries: int = 100_000) -> None:
        self._map: OrderedDict[tuple[str, str, str], AnsweredIn] = OrderedDict()
        self._max = max_entries

    async def remember(self, message: str, turn: Turn) -> None:
        self._map[(turn.platform, turn.tenant, message)] = AnsweredIn(turn.key, turn.event_id)
        while len(self._map) > self._max:
            self._map.popitem(last=False)

    async def find(self, platform: str, tenant: str, message: str) -> AnsweredIn | None:
        return self._map.get((platform, tenant, message))
