"""The dialogue manager: runs one turn from its arrival to its saved answer.

For each turn: keep the conversation's turns in order, drop platform retries,
answer commands, check the input, load the context, then

    moderation on the input -> route -> handler -> moderation on the output -> reply

and save both sides (as moderated: redacted text never reaches the LLM or the store).
Every turn ends in exactly one logged `Outcome`; no error escapes without the user
being told something.

`serve` is the worker loop over an inbox: different conversations run
concurrently (bounded by `max_in_flight`), turns of one conversation strictly one
after another in arrival order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, replace

from bot import messages
from bot.config import Settings
from bot.context import ContextStore, Message
from bot.dedupe import Deduper
from bot.errors import InboxClosed, InputRejected, LLMError, ParleyError
from bot.handlers import Handler, Request
from bot.inbox import Inbox
from bot.llm import LLMClient, Usage, affinity_key, usage_meter
from bot.logs import turn_fields
from bot.metrics import Metrics
from bot.moderation import Moderator
from bot.reply import ReplySink, SinkFactory
from bot.routing import Route, Router
from bot.tenants import TenantConfig, Tenants
from bot.turns import ConversationKey, Outcome, Reply, Turn

log = logging.getLogger(__name__)


class KeyedLocks:
    """One FIFO lock per conversation, kept only while someone holds or waits for it.

    `hold` takes the lock before its first suspension, so turns that start in
    arrival order also acquire in arrival order (asyncio.Lock is fair).
    """

    def __init__(self) -> None:
        self._locks: dict[ConversationKey, tuple[asyncio.Lock, list[int]]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def hold(self, key: ConversationKey) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[key]


OUTPUT_HOLD = 64  # characters of an answer held back at most while personal data may be in progress
_RUN_CHARS = frozenset("_.+-@()")  # besides letters and digits, what a phone, card, IBAN or e-mail holds
_SEPARATORS = " .-"  # between the chunks of a number being written


def _boundary(text: str) -> int:
    """How much of the pending answer may be released now. Everything is, except a tail
    that may be personal data still being written (chunks with digits, `+` or `@`, which a
    phone, card, IBAN or e-mail address has), held until it ends or `OUTPUT_HOLD` is passed:
    so answers still stream token by token, and a number is checked whole before it shows.
    Profanity is checked per released piece (a word split across pieces can slip through).

    A scan back from the end, never more than `OUTPUT_HOLD` characters: this runs on every
    streamed token (a backtracking regex here once took seconds on "a1a1...!").
    """
    start = pos = len(text)
    while pos > 0:
        end = pos - 1 if text[pos - 1] in _SEPARATORS else pos
        chunk_start = end
        while chunk_start > 0 and (text[chunk_start - 1].isalnum() or text[chunk_start - 1] in _RUN_CHARS):
            chunk_start -= 1
            if len(text) - chunk_start > OUTPUT_HOLD:
                return len(text)
        chunk = text[chunk_start:end]
        if not any(c.isdigit() or c in "@+" for c in chunk):
            break
        start = pos = chunk_start
    return start


def _estimate(text: str) -> int:
    return len(text) // 4 + 1  # ~4 characters a token for English text


@dataclass(slots=True)
class _Answer:
    """What the handler produced, as the guarded stream saw it."""

    text: str = ""
    error: LLMError | None = None
    first_token: float | None = None
    llm_time: float = 0.0


class DialogueManager:
    def __init__(
        self,
        *,
        settings: Settings,
        store: ContextStore,
        deduper: Deduper,
        llm: LLMClient,
        handlers: Mapping[str, Handler],
        router: Router | None = None,
        moderator: Moderator | None = None,
        tenants: Tenants | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._settings = settings
        self._metrics = metrics or Metrics()
        self._store = store
        self._deduper = deduper
        self._llm = llm
        self._handlers = handlers
        self._router = router
        self._moderator = moderator
        self._default_tenant = TenantConfig()
        self._tenants = tenants
        self._locks = KeyedLocks()
        self._slots = asyncio.Semaphore(settings.dialogue.max_in_flight)

    # -- one turn ------------------------------------------------------------------------

    async def handle(self, turn: Turn, sink: ReplySink) -> Reply:
        """Run one turn to its end. Never raises except for cancellation."""
        started = time.perf_counter()
        # Every engine request of this turn goes to the conversation's engine (prefix cache).
        sticky = affinity_key.set(str(turn.key) if self._settings.llm.sticky else None)
        try:
            async with self._locks.hold(turn.key):
                try:
                    reply = await self._run(turn, sink, started)
                except ParleyError as exc:
                    reply = await self._fail(turn, sink, exc, started, expected=True)
                except Exception as exc:  # the error boundary around one turn
                    reply = await self._fail(turn, sink, exc, started, expected=False)
        finally:
            affinity_key.reset(sticky)
        self._metrics.observe(turn, reply)
        log.info(
            "turn %s in %.0f ms (llm %.0f ms, first token %s)",
            reply.outcome,
            reply.total * 1000,
            reply.llm_time * 1000,
            f"{reply.ttft * 1000:.0f} ms" if reply.ttft is not None else "-",
            extra=turn_fields(turn),
        )
        return reply

    async def _run(self, turn: Turn, sink: ReplySink, started: float) -> Reply:
        if turn.command not in ("help", "reset"):
            # The context is read beside the dedupe claim: one round trip of waiting, not
            # two (a duplicate's read is simply dropped).
            first, context = await asyncio.gather(self._deduper.claim(turn), self._store.load(turn.key))
        else:
            first, context = await self._deduper.claim(turn), None
        if not first:
            return self._reply(turn, Outcome.DUPLICATE, started)
        if turn.command == "help":
            await sink.send(messages.HELP)
            return self._reply(turn, Outcome.COMMAND, started, text=messages.HELP)
        if turn.command == "reset":
            await self._store.reset(turn.key)
            await sink.send(messages.RESET_DONE)
            return self._reply(turn, Outcome.COMMAND, started, text=messages.RESET_DONE)
        try:
            self._check(turn.text)
        except InputRejected as exc:
            log.info("input rejected: %s", exc, extra=turn_fields(turn))
            text = messages.for_user(exc)
            await sink.send(text)
            return self._reply(turn, Outcome.REJECTED, started, text=text, error=exc.reason)

        tenant = self._tenants.get(turn.tenant) if self._tenants else self._default_tenant
        flags: tuple[str, ...] = ()
        if self._moderator is not None:
            verdict = await self._moderator.check(turn, turn.text, tenant.moderation)
            flags = verdict.reasons + verdict.flags + verdict.redacted
            if verdict.refused:
                text = messages.moderation_refused(verdict.reasons)
                await sink.send(text)
                return self._reply(turn, Outcome.REJECTED, started, text=text, error="moderation", moderation=flags)
            # From here on the turn is the moderated one: redacted text is all the LLM and the store see.
            turn = replace(turn, text=verdict.text)
        route = await self._route(turn, tenant)
        log.info(
            "routed to %s by %s step (score %s) in %.1f ms",
            route.intent, route.step, f"{route.score:.2f}" if route.score is not None else "-", route.seconds * 1000,
            extra=turn_fields(turn),
        )

        # Counting the user's tokens runs beside the answer.
        user_tokens = asyncio.create_task(self._count(turn.text))
        usage = Usage()
        metering = usage_meter.set(usage)
        try:
            assert context is not None
            answer = _Answer()
            deltas = self._handlers[route.intent].answer(Request(turn, context, route, tenant))
            if self._moderator is not None and tenant.moderation.check_output:
                deltas = self._moderated(deltas, turn, tenant)
            shown = await sink.stream(self._guarded(deltas, answer))
            if not shown.strip():
                # An engine that ends with nothing visible must not leave the user in silence.
                shown = messages.EMPTY_ANSWER
                await sink.send(shown)
            new = [Message("user", turn.text, self._tokens_now(user_tokens, turn.text))]
            if answer.text.strip():
                tokens = usage.completion_tokens or await self._count(answer.text)
                new.append(Message("assistant", answer.text, tokens))
            await self._store.save(turn.key, context, new)
        finally:
            usage_meter.reset(metering)
            user_tokens.cancel()
        if answer.error is not None:
            log.warning("answer failed: %r", answer.error, extra=turn_fields(turn))
        return self._reply(
            turn,
            Outcome.FAILED if answer.error else Outcome.ANSWERED,
            started,
            text=shown,
            error=type(answer.error).__name__ if answer.error else "",
            ttft=answer.first_token - started if answer.first_token else None,
            llm_time=answer.llm_time,
            intent=route.intent,
            route_step=route.step,
            route_time=route.seconds,
            moderation=flags,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
        )

    async def _route(self, turn: Turn, tenant: TenantConfig) -> Route:
        allowed = [intent for intent in tenant.handlers if intent in self._handlers]
        if self._router is None:
            return Route("chat", "default", turn.text)
        return await self._router.route(turn.text, command=turn.command, allowed=allowed)

    async def _moderated(self, deltas: AsyncIterator[str], turn: Turn, tenant: TenantConfig) -> AsyncIterator[str]:
        """The answer as the user may see it: each piece checked before release, so personal data or profanity in a generated answer is redacted or
        withheld before it is shown or saved (see `_boundary`)."""
        assert self._moderator is not None
        held = ""

        async def release(segment: str) -> tuple[str, bool]:
            verdict = await self._moderator.check(turn, segment, tenant.moderation, direction="output")  # type: ignore[union-attr]
            return (messages.MODERATION_OUTPUT_WITHHELD, True) if verdict.refused else (verdict.text, False)

        async with aclosing(deltas):
            try:
                async for delta in deltas:
                    held += delta
                    cut = _boundary(held)
                    if cut:
                        text, stop = await release(held[:cut])
                        held = held[cut:]
                        yield text
                        if stop:
                            return
            except LLMError:
                if held:  # what was generated before the failure is still checked, then shown
                    yield (await release(held))[0]
                raise
        if held:
            yield (await release(held))[0]

    def _check(self, text: str) -> None:
        if not text.strip():
            raise InputRejected("empty")
        limit = self._settings.context.max_input_chars
        if len(text) > limit:
            raise InputRejected("too_long", length=len(text), limit=limit)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from bytes that were not UTF-8
            raise InputRejected("invalid_utf8", length=len(text)) from None

    async def _guarded(self, deltas: AsyncIterator[str], answer: _Answer) -> AsyncIterator[str]:
        """The handler's stream as the sink sees it: an LLM failure becomes a notice to
        the user (appended if the answer had started), never an exception in the sink."""
        started = time.perf_counter()
        try:
            async with aclosing(deltas):
                async for delta in deltas:
                    if answer.first_token is None:
                        answer.first_token = time.perf_counter()
                    answer.text += delta
                    yield delta
        except LLMError as exc:
            answer.error = exc
            yield messages.interrupted(exc) if answer.text.strip() else messages.for_user(exc)
        finally:
            answer.llm_time = time.perf_counter() - started

    @staticmethod
    def _tokens_now(count: asyncio.Task[int], text: str) -> int:
        """The exact count if /tokenize has answered by now, else an estimate: the count
        only steers when history is compacted, and waiting for it would put an engine
        round trip on every turn's critical path (it runs beside generation instead)."""
        if count.done() and not count.cancelled():
            return count.result()
        return _estimate(text)

    async def _count(self, text: str) -> int:
        try:
            return await self._llm.count_tokens(text)
        except LLMError:
            return _estimate(text)  # the engine is down; the turn is failing anyway

    async def _fail(self, turn: Turn, sink: ReplySink, exc: BaseException, started: float, *, expected: bool) -> Reply:
        if expected:
            log.error("turn failed: %r", exc, extra=turn_fields(turn))
        else:
            log.exception("turn crashed", extra=turn_fields(turn))
        text = messages.for_user(exc)
        try:
            await sink.send(text)
        except Exception:
            log.exception("could not tell the user about the failure", extra=turn_fields(turn))
        return self._reply(turn, Outcome.FAILED, started, text=text, error=type(exc).__name__)

    @staticmethod
    def _reply(turn: Turn, outcome: Outcome, started: float, **fields: object) -> Reply:
        return Reply(turn.key, turn.event_id, outcome, total=time.perf_counter() - started, **fields)  # type: ignore[arg-type]

    # -- the worker loop -----------------------------------------------------------------

    async def serve(self, inbox: Inbox, sinks: Mapping[str, SinkFactory]) -> None:
        """Take turns from the inbox until it is closed, then finish those in flight."""
        async with asyncio.TaskGroup() as turns:
            while True:
                try:
                    turn = await inbox.get()
                except InboxClosed:
                    break
                await self._slots.acquire()
                # Created in arrival order; each takes its conversation's lock first thing.
                turns.create_task(self._serve_one(turn, sinks))

    async def _serve_one(self, turn: Turn, sinks: Mapping[str, SinkFactory]) -> None:
        try:
            factory = sinks.get(turn.platform)
            if factory is None:
                log.error("no adapter for platform %s; turn dropped", turn.platform, extra=turn_fields(turn))
                return
            await self.handle(turn, factory.sink_for(turn))
        except Exception:
            # An adapter that cannot even make a sink must not take the workers down.
            log.exception("no way to answer this turn; dropped", extra=turn_fields(turn))
        finally:
            self._slots.release()
