"""The dialogue manager: runs one turn from its arrival to its saved answer.

For each turn: keep the conversation's turns in order, drop platform retries,
answer commands, check the input, load the context, then

    moderation on the input -> route -> handler -> moderation on the output -> reply

and save both sides (as moderated: redacted text never reaches the LLM or the store).
A conversation handed to people (`bot.handoff.flow`: the `handoff` intent, anger, failed
answers in a row) is not routed: its messages go to the support desk, and the desk's
replies, its resolve and votes on answers arrive as turns of it (`command` agent,
resolve, feedback). Every turn ends in exactly one logged `Outcome`; no error escapes without the user
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
from contextlib import aclosing, asynccontextmanager, suppress
from dataclasses import dataclass, replace

from bot import messages
from bot.config import Settings
from bot.store.context import Context, ContextStore, Message, estimate_tokens
from bot.store.dedupe import Deduper
from bot.errors import InboxClosed, InputRejected, LLMError, ParleyError, PlatformError, StoreUnavailable
from bot.handlers import ChatAlike, Handler, Request
from bot.handoff.flow import DESK_COMMANDS, Handoffs, Step, Ticket
from bot.store.inbox import Delivery, Inbox
from bot.llm.client import LLMClient, Usage, affinity_key, request_sent, usage_meter
from bot.ops.logs import turn_fields
from bot.ops.metrics import Metrics
from bot.moderation.moderator import Moderator
from bot.reply import ReplySink, SinkFactory, reply_journal
from bot.routing.router import HANDOFF, Route, Router
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
    phone, card, IBAN or e-mail address has, and the word being written, which may yet be
    an address's local part), held until it ends or `OUTPUT_HOLD` is passed:
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
        # The last chunk, with no separator after it yet, may still grow into an address
        # ("jane.doe" before its "@"): held until the next separator shows it ended.
        if not chunk or (end < len(text) and not any(c.isdigit() or c in "@+" for c in chunk)):
            break
        start = pos = chunk_start
    return start


def check_size(text: str, limit: int) -> None:
    """Refuse, as `InputRejected`, a message that is empty or longer than `limit` characters
    (`bot.messages.for_user` has the words for each)."""
    if not text.strip():
        raise InputRejected("empty")
    if len(text) > limit:
        raise InputRejected("too_long", length=len(text), limit=limit)


SAVE_RETRIES = (0.2, 0.5, 1.0, 2.0, 4.0)  # seconds between tries of a failed save (~8 s in all)
DEFER_PAUSE = (0.2, 5.0)  # first and longest pause before a deferred turn is tried again
MAX_TRACKED_TENANTS = 10_000  # tenants whose share of chat-like turns steers speculation
HEAD_START = 0.05  # seconds routing waits at most for a speculative request to leave first


@dataclass(slots=True)
class _Answer:
    """What the handler produced, as the guarded stream saw it. `engine_started` is when its
    engine request began, when that was before the stream was read (a speculative start)."""

    text: str = ""
    error: LLMError | None = None
    first_token: float | None = None
    llm_time: float = 0.0
    engine_started: float | None = None


class _Ahead:
    """A handler's stream running ahead in a task of its own, its deltas kept until they are
    read. The whole generator lives in that one task (its engine request and its cleanup),
    so dropping it is cancelling the task, which closes the request: vLLM aborts it."""

    _DONE = object()

    def __init__(self, deltas: AsyncIterator[str]) -> None:
        self.started = time.perf_counter()
        self._queue: asyncio.Queue[object] = asyncio.Queue()
        self.sent = asyncio.Event()  # the engine request has left (see `bot.llm.client.request_sent`)
        token = request_sent.set(self.sent)  # the task copies the context as it is now
        try:
            self._task = asyncio.create_task(self._pump(deltas))
        finally:
            request_sent.reset(token)

    async def _pump(self, deltas: AsyncIterator[str]) -> None:
        try:
            async with aclosing(deltas):
                async for delta in deltas:
                    self._queue.put_nowait(delta)
        except Exception as exc:  # handed to the reader, where the turn's error handling is
            self._queue.put_nowait(exc)
        finally:
            self.sent.set()  # also when it ended before sending anything
            self._queue.put_nowait(self._DONE)

    async def head_start(self) -> None:
        """Wait (briefly) until the request has left: routing's CPU work (an embedding) then
        runs while the engine already prefills, instead of delaying the request it competes
        with for the event loop and the CPU."""
        with suppress(TimeoutError):
            async with asyncio.timeout(HEAD_START):
                await self.sent.wait()

    async def deltas(self) -> AsyncIterator[str]:
        try:
            while (item := await self._queue.get()) is not self._DONE:
                if isinstance(item, Exception):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            await self.drop()  # the reader stopped early (a platform error): stop the engine too

    async def drop(self) -> None:
        if self._task.done():
            return  # read to its end: nothing to stop, and no loop round to wait for
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


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
        handoffs: Handoffs | None = None,
    ) -> None:
        self._settings = settings
        self._handoffs = handoffs
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
        self._chat_share: dict[str, float] = {}  # per tenant: recent share of turns answered as chat
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
                if self._handoffs is not None:
                    reply = await self._after(turn, sink, reply)
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
        try:
            if turn.command not in ("help", "reset"):
                # The context is read beside the dedupe claim: one round trip of waiting, not
                # two (a duplicate's read is simply dropped).
                first, context, ticket = await asyncio.gather(
                    self._deduper.claim(turn), self._store.load(turn.key), self._ticket(turn.key)
                )
            else:
                first, context, ticket = await self._deduper.claim(turn), None, None
        except StoreUnavailable as exc:
            # Nothing has been shown yet: the turn waits for Redis instead of failing.
            log.warning("store unavailable, turn deferred: %s", exc, extra=turn_fields(turn))
            return self._reply(turn, Outcome.DEFERRED, started, error="StoreUnavailable")
        if not first:
            return self._reply(turn, Outcome.DUPLICATE, started)
        if context is not None and turn.uid and turn.uid in context.answered:
            # Saved by a worker that stopped before it could finish the turn in the inbox.
            log.info("turn %s was answered before its worker stopped", turn.uid, extra=turn_fields(turn))
            return self._reply(turn, Outcome.DUPLICATE, started)
        if turn.command == "help":
            await sink.send(messages.HELP)
            return self._reply(turn, Outcome.COMMAND, started, text=messages.HELP)
        if turn.command == "reset":
            await self._store.reset(turn.key)
            await sink.send(messages.RESET_DONE)
            return self._reply(turn, Outcome.COMMAND, started, text=messages.RESET_DONE)
        if turn.command in DESK_COMMANDS:
            return await self._desk_turn(turn, context, ticket, sink, started)
        try:
            self._check(turn.text)
        except InputRejected as exc:
            log.info("input rejected: %s", exc, extra=turn_fields(turn))
            text = messages.for_user(exc)
            await sink.send(text)
            return self._reply(turn, Outcome.REJECTED, started, text=text, error=exc.reason)

        tenant = self._tenant(turn)
        flags: tuple[str, ...] = ()
        if self._moderator is not None:
            verdict = await self._moderator.check(turn, turn.text, tenant.moderation)
            flags = verdict.reasons + verdict.flags + verdict.redacted
            if ticket is None and self._handoffs is not None and self._handoffs.hands_off_anger(verdict):
                # An angry user goes to a person; a refused swear word is starred out for them.
                text = self._moderator.censor(verdict.text) if verdict.refused else verdict.text
                return await self._handed_off(replace(turn, text=text), context, sink, tenant, "anger", started, flags)
            if verdict.refused:
                text = messages.moderation_refused(verdict.reasons)
                await sink.send(text)
                return self._reply(turn, Outcome.REJECTED, started, text=text, error="moderation", moderation=flags)
            # From here on the turn is the moderated one: redacted text is all the LLM and the store see.
            turn = replace(turn, text=verdict.text)
        if ticket is not None and self._handoffs is not None:
            # Handed off: people answer now; the message goes to them and to the context.
            assert context is not None
            step = await self._handoffs.forward(turn, ticket, sink, tenant)
            return await self._step(turn, context, step, started, intent=HANDOFF, moderation=flags)
        assert context is not None
        usage = Usage()
        metering = usage_meter.set(usage)  # before a speculative request, whose task copies it
        ahead = self._speculate(turn, context, tenant)
        try:
            if ahead is not None:
                await ahead.head_start()
            try:
                route = await self._route(turn, context, tenant)
            except StoreUnavailable as exc:
                # Routing reads the knowledge base's version; nothing has been shown yet, so the
                # turn waits for Redis as when its context could not be read.
                log.warning("store unavailable while routing, turn deferred: %s", exc, extra=turn_fields(turn))
                return self._reply(turn, Outcome.DEFERRED, started, error="StoreUnavailable")
            log.info(
                "routed to %s by %s step (score %s) in %.1f ms",
                route.intent, route.step, f"{route.score:.2f}" if route.score is not None else "-",
                route.seconds * 1000, extra=turn_fields(turn),
            )
            request = Request(turn, context, route, tenant)
            if not await self._keep_speculation(request) and ahead is not None:
                await ahead.drop()
                ahead = None
            if route.intent == HANDOFF and self._handoffs is not None:
                return await self._handed_off(turn, context, sink, tenant, "request", started, flags, route)
            reply = await self._answer_turn(request, sink, ahead, usage, started, flags)
        finally:
            if ahead is not None:
                await ahead.drop()  # read to its end by now, unless the sink failed first
            usage_meter.reset(metering)
        return reply

    async def _answer_turn(
        self, request: Request, sink: ReplySink, ahead: _Ahead | None, usage: Usage, started: float,
        flags: tuple[str, ...],
    ) -> Reply:
        turn, context, route, tenant = request.turn, request.context, request.route, request.tenant
        # Counting the user's tokens runs beside the answer.
        user_tokens = asyncio.create_task(self._count(turn.text))
        try:
            answer = _Answer()
            if ahead is not None:
                deltas, answer.engine_started = ahead.deltas(), ahead.started
            else:
                deltas = self._handlers[route.intent].answer(request)
            if self._moderator is not None and tenant.moderation.check_output:
                deltas = self._moderated(deltas, turn, tenant)
            # Closed here, whatever the sink did: a sink that fails mid-answer leaves the stream
            # unfinished, and only closing it aborts the engine's request now (not at collection).
            guarded = self._guarded(deltas, answer)
            async with aclosing(guarded):
                shown = await sink.stream(guarded)
            if not shown.strip():
                # An engine that ends with nothing visible must not leave the user in silence.
                shown = messages.EMPTY_ANSWER
                await sink.send(shown)
            new = [Message("user", turn.text, self._tokens_now(user_tokens, turn.text))]
            if answer.text.strip():
                tokens = usage.completion_tokens or await self._count(answer.text)
                new.append(Message("assistant", answer.text, tokens))
            await self._save(turn, context, new)
        finally:
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

    # -- speculation: the chat answer starts beside routing ------------------------------------

    def _speculate(self, turn: Turn, context: Context, tenant: TenantConfig) -> _Ahead | None:
        """Start the plain-chat answer before routing decides, where that usually pays: routing's
        own work (an embedding, maybe a constrained choice) then overlaps the engine's prefill
        instead of coming before it. Per tenant, only while most of its turns end up answered
        as chat; a support tenant whose turns mostly go to its knowledge base does not pay for
        requests that are started only to be dropped."""
        if (
            not self._settings.routing.speculate
            or self._router is None
            or "chat" not in self._handlers
            or "chat" not in tenant.handlers
            or turn.command is not None  # an explicit command names its handler
            or self._chat_share.get(turn.tenant, 1.0) < 0.5
        ):
            return None
        return _Ahead(self._handlers["chat"].answer(Request(turn, context, Route("chat", "speculative", turn.text), tenant)))

    async def _answers_as_chat(self, request: Request) -> bool:
        """Whether the routed handler answers this turn exactly as plain chat would."""
        intent = request.route.intent
        handler = self._handlers.get(intent)
        return intent == "chat" or (isinstance(handler, ChatAlike) and await handler.answers_as_chat(request))

    async def _keep_speculation(self, request: Request) -> bool:
        """Whether a speculative chat answer is this turn's answer; tracked per tenant for
        `_speculate`."""
        if not self._settings.routing.speculate:
            return False
        keep = await self._answers_as_chat(request)
        tenant = request.turn.tenant
        if tenant in self._chat_share or len(self._chat_share) < MAX_TRACKED_TENANTS:
            self._chat_share[tenant] = 0.9 * self._chat_share.get(tenant, 1.0) + 0.1 * keep
        return keep

    def _tenant(self, turn: Turn) -> TenantConfig:
        return self._tenants.get(turn.tenant) if self._tenants else self._default_tenant

    async def _route(self, turn: Turn, context: Context, tenant: TenantConfig) -> Route:
        allowed = [intent for intent in tenant.handlers if intent in self._handlers]
        if self._handoffs is not None and self._handoffs.on_request:
            allowed.append(HANDOFF)
        if self._router is None:
            return Route("chat", "default", turn.text)

        async def as_chat(intent: str) -> bool:
            return await self._answers_as_chat(Request(turn, context, Route(intent, "candidate", turn.text), tenant))

        return await self._router.route(turn.text, command=turn.command, allowed=allowed, as_chat=as_chat)

    # -- handing off to people (bot.handoff.flow) ------------------------------------------------

    async def _ticket(self, key: ConversationKey) -> Ticket | None:
        return await self._handoffs.ticket(key) if self._handoffs is not None else None

    async def _desk_turn(
        self, turn: Turn, context: Context | None, ticket: Ticket | None, sink: ReplySink, started: float
    ) -> Reply:
        """A person's reply or resolve from the desk, or a vote on an answer."""
        if self._handoffs is None:
            log.info("%s event ignored: handoff and feedback are not set up", turn.command, extra=turn_fields(turn))
            return self._reply(turn, Outcome.IGNORED, started, error="handoff not set up")
        assert context is not None
        return await self._step(turn, context, await self._handoffs.desk_turn(turn, ticket, sink), started)

    async def _handed_off(
        self, turn: Turn, context: Context | None, sink: ReplySink, tenant: TenantConfig, reason: str,
        started: float, flags: tuple[str, ...], route: Route | None = None,
    ) -> Reply:
        assert context is not None and self._handoffs is not None
        step = await self._handoffs.hand_off(turn, context, sink, tenant, reason, user_text=turn.text)
        return await self._step(
            turn, context, step, started, intent=HANDOFF, moderation=flags,
            route_step=route.step if route else reason, route_time=route.seconds if route else 0.0,
        )

    async def _step(self, turn: Turn, context: Context, step: Step, started: float, **fields: object) -> Reply:
        await self._keep(turn, context, step)
        return self._reply(turn, step.outcome, started, text=step.text, error=step.error, **fields)

    async def _keep(self, turn: Turn, context: Context, step: Step) -> None:
        if step.save:
            await self._save(turn, context, list(step.save))

    async def _after(self, turn: Turn, sink: ReplySink, reply: Reply) -> Reply:
        """After every turn, in the conversation's lock: the figures for `parley report`, and the
        hand-off after too many failed answers in a row. Never fails the turn."""
        assert self._handoffs is not None
        try:
            reason = await self._handoffs.after(turn, reply)
            if reason is not None:
                context = await self._store.load(turn.key)
                step = await self._handoffs.hand_off(turn, context, sink, self._tenant(turn), reason, user_text=None)
                await self._keep(turn, context, step)
        except StoreUnavailable as exc:  # Redis is down: the turn has said so already
            log.warning("handoff bookkeeping after the turn skipped: %s", exc, extra=turn_fields(turn))
        except Exception:
            log.exception("handoff bookkeeping after the turn failed", extra=turn_fields(turn))
        return reply

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
        check_size(text, self._settings.context.max_input_chars)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates from bytes that were not UTF-8
            raise InputRejected("invalid_utf8", length=len(text)) from None

    async def _guarded(self, deltas: AsyncIterator[str], answer: _Answer) -> AsyncIterator[str]:
        """The handler's stream as the sink sees it: an LLM failure becomes a notice to
        the user (appended if the answer had started), never an exception in the sink."""
        started = answer.engine_started or time.perf_counter()
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
        return estimate_tokens(text)

    async def _save(self, turn: Turn, context: Context, new: list[Message]) -> None:
        """Save the turn, riding out a short Redis outage: the answer has been shown, and a
        turn left unsaved would be missing from the context of every later one."""
        for pause in SAVE_RETRIES:
            try:
                await self._store.save(turn.key, context, new, uid=turn.uid)
                return
            except StoreUnavailable as exc:
                log.warning("saving the turn failed (%s); again in %.1f s", exc, pause, extra=turn_fields(turn))
                await asyncio.sleep(pause)
        await self._store.save(turn.key, context, new, uid=turn.uid)

    async def _count(self, text: str) -> int:
        try:
            return await self._llm.count_tokens(text)
        except LLMError:
            return estimate_tokens(text)  # the engine is down; the turn is failing anyway

    async def _fail(self, turn: Turn, sink: ReplySink, exc: BaseException, started: float, *, expected: bool) -> Reply:
        if expected:
            log.error("turn failed: %r", exc, extra=turn_fields(turn))
        else:
            log.exception("turn crashed", extra=turn_fields(turn))
        text = messages.for_user(exc)
        if isinstance(exc, PlatformError) and exc.permanent:
            # The channel is gone or closed to the bot: a notice would fail the same way.
            return self._reply(turn, Outcome.FAILED, started, text="", error=type(exc).__name__)
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
                # A slot first, then a turn: a busy worker leaves the inbox's turns to the others.
                await self._slots.acquire()
                try:
                    delivery = await inbox.get()
                except InboxClosed:
                    self._slots.release()
                    break
                # Created in arrival order; each takes its conversation's lock first thing.
                turns.create_task(self._serve_one(inbox, delivery, sinks))

    async def _serve_one(self, inbox: Inbox, delivery: Delivery, sinks: Mapping[str, SinkFactory]) -> None:
        try:
            await self._answer(inbox, delivery, sinks)
            await inbox.done(delivery)  # not reached when cancelled: the turn stays for another worker
        finally:
            self._slots.release()

    async def _answer(self, inbox: Inbox, delivery: Delivery, sinks: Mapping[str, SinkFactory]) -> None:
        turn = delivery.turn
        try:
            factory = sinks.get(turn.platform)
            if factory is None:
                log.error("no adapter for platform %s; turn dropped", turn.platform, extra=turn_fields(turn))
            elif not await inbox.in_order(delivery):
                log.info("turn %s already finished by a worker that stopped", turn.seq, extra=turn_fields(turn))
            else:
                journal = reply_journal.set(inbox.journal(delivery))
                try:
                    pause = DEFER_PAUSE[0]
                    while (await self.handle(turn, factory.sink_for(turn))).outcome is Outcome.DEFERRED:
                        await asyncio.sleep(pause)
                        pause = min(pause * 2, DEFER_PAUSE[1])
                finally:
                    reply_journal.reset(journal)
        except Exception:
            # An adapter that cannot even make a sink must not take the workers down.
            log.exception("no way to answer this turn; dropped", extra=turn_fields(turn))
