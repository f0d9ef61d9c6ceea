"""Slack's assistant pane ("AI apps") and the App Home tab.

- `assistant_thread_started` (someone opens the pane): Parley greets in the new thread and sets
  the tenant's suggested prompts, led by "Summarise this channel" when the user is looking at a
  channel; the thread is remembered as a pane thread, with that channel
  (`threads.ThreadMemory.open_pane`), which the pane's `summarise` reads (`summaries`).
- `assistant_thread_context_changed`: the user moved to another channel; remembered the same way.
- A question in a pane thread is an ordinary DM message (`normalize`), so `help` and `reset`
  work there too; `intake` marks its turn (`PANE`, `TITLE`), and its sink titles the thread with
  the first question and shows a status until the answer starts (`sink.SlackSink`).
- `app_home_opened` on the Home tab: `views.publish` of what Parley does in this workspace, and
  the person's own recent conversations with Parley there (`recents`), newest first, each linked
  (`chat.getPermalink`; without a link when Slack gives none). Republished at each opening only.

Bolt's `AsyncAssistant` middleware dispatches the two pane events here; the pane's messages pass
through it to the intake like every DM. Everything is acknowledged at once: the greeting, the
prompts and the Home view are sent by tasks of the adapter's `notices` group.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from slack_bolt.context.async_context import AsyncBoltContext
from slack_bolt.response import BoltResponse
from slack_sdk.web.async_client import AsyncWebClient

from adapters.slack.mrkdwn import escape, link
from adapters.slack.normalize import PLATFORM, TITLE_CHARS, PaneThread, pane_thread, tenant_of
from adapters.slack.recents import Recent, Recents
from adapters.slack.sink import call
from adapters.slack.threads import ThreadMemory
from bot import messages
from bot.errors import ParleyError, PlatformError
from bot.profiles import Profiles
from bot.reply import ReplySink
from bot.store.dedupe import Deduper
from bot.turns import Turn

log = logging.getLogger(__name__)

PANE_EVENTS = ("assistant_thread_started", "assistant_thread_context_changed")
MAX_PROMPTS = 4  # Slack's limit on suggested prompts
HOME_RECENTS = 5  # recent conversations on the Home tab: with the rest, far below Slack's 100 blocks
CHANNEL_ID = re.compile(r"[CG][A-Z0-9]{1,30}")  # a channel Parley may name as <#C…>
Block = dict[str, Any]


class AssistantPane:
    """The listeners of the pane's events and the Home tab, for one run of the adapter."""

    def __init__(
        self,
        *,
        threads: ThreadMemory,
        deduper: Deduper,
        profiles: Profiles,
        default_prompts: Sequence[str],
        notices: asyncio.TaskGroup,
        client_for: Callable[[str], AsyncWebClient],
        sink_for: Callable[[Turn], ReplySink],
        recents: Recents,
    ) -> None:
        self._recents = recents  # each person's recent conversations, for their Home tab
        self._threads = threads
        self._deduper = deduper  # one greeting per thread, whatever Slack redelivers
        self._profiles = profiles
        self._default_prompts = tuple(default_prompts) or messages.ASSISTANT_PROMPTS
        self._notices = notices
        self._client_for = client_for  # the workspace's Web API client
        self._sink_for = sink_for

    def prompts(self, tenant: str, channel: str = "") -> tuple[str, ...]:
        """The profile's own suggestions, else SLACK_SUGGESTED_PROMPTS, else Parley's."""
        return self._profiles.profile(tenant, channel).suggested_prompts or self._default_prompts

    async def screen(self, body: dict[str, Any], next_: Callable[[], Awaitable[None]]) -> BoltResponse | None:
        """Bolt middleware before `AsyncAssistant`, which raises on a pane event without its
        thread (bolt would answer 500, and Slack retry it for nothing): such an event is
        acknowledged and dropped here, with a log line."""
        kind = (body.get("event") or {}).get("type")
        if kind in PANE_EVENTS and pane_thread(body, "") is None:
            log.warning("%s without a thread: ignored", kind)
            return BoltResponse(status=200, body="")
        await next_()
        return None

    async def started(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        if (thread := await self._pane(body, context)) is not None:
            self._notices.create_task(self._greet(thread))

    async def context_changed(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        await self._pane(body, context)

    async def _pane(self, body: dict[str, Any], context: AsyncBoltContext) -> PaneThread | None:
        """The pane's thread, remembered with the channel the user is looking at (None: no thread)."""
        kind = (body.get("event") or {}).get("type")
        thread = pane_thread(body, context.team_id or "")
        if thread is None:
            log.warning("%s without a thread: ignored", kind)
            return None
        await self._threads.open_pane(thread.key, thread.viewing)
        log.info("slack %s: thread %s, viewing %s", kind, thread.key, thread.viewing or "nothing")
        return thread

    async def home(self, body: dict[str, Any], context: AsyncBoltContext) -> None:
        """The Home tab opened: publish what Parley does here (the Messages tab needs nothing)."""
        event = body.get("event") or {}
        user = event.get("user")
        if event.get("tab") != "home" or not isinstance(user, str) or not user:
            return
        tenant = tenant_of(body, body.get("team_id") or context.team_id or "")
        self._notices.create_task(self._publish_home(tenant, user))

    async def _greet(self, thread: PaneThread) -> None:
        turn = Turn(
            platform=PLATFORM,
            tenant=thread.tenant,
            channel=thread.channel,
            thread=thread.thread_ts,
            user=thread.user,
            text="",
            event_id=f"pane:{thread.channel}:{thread.thread_ts}",
        )
        offered = self.prompts(thread.tenant, thread.channel)
        if thread.viewing:  # pressed, it is the pane's `summarise` (`normalize.pane_command_of`)
            offered = (messages.ASSISTANT_SUMMARISE_PROMPT, *offered[: MAX_PROMPTS - 1])
        prompts = [{"title": p, "message": p} for p in offered]
        client = self._client_for(thread.tenant)
        try:
            if not await self._deduper.claim(turn):
                return
            await self._sink_for(turn).send(messages.ASSISTANT_GREETING)
            # Plain text, not mrkdwn: a prompt pressed is sent as the user's own message, as written.
            await call(
                "assistant.threads.setSuggestedPrompts",
                client.assistant_threads_setSuggestedPrompts(
                    channel_id=thread.channel,
                    thread_ts=thread.thread_ts,
                    title=messages.ASSISTANT_PROMPTS_TITLE,
                    prompts=prompts,
                ),
            )
        except ParleyError as exc:
            log.warning("could not greet in assistant thread %s: %r", thread.key, exc)

    async def _publish_home(self, tenant: str, user: str) -> None:
        client = self._client_for(tenant)
        try:
            recent = await self._recents.recent(tenant, user, HOME_RECENTS)
            links = await asyncio.gather(*(permalink(client, r) for r in recent))
            view = self.home_view(tenant, recent_blocks(recent, links))
            await call("views.publish", client.views_publish(user_id=user, view=view))
        except ParleyError as exc:
            log.warning("could not publish the Home tab for %s in %s: %r", user, tenant, exc)

    def home_view(self, tenant: str, recent: Sequence[Block] = ()) -> dict[str, Any]:
        """What Parley can do in this workspace: its enabled handlers, its commands, its prompts;
        then `recent`, the person's recent conversations (`recent_blocks`)."""
        config = self._profiles.profile(tenant, "")

        def section(text: str) -> dict[str, Any]:
            return {"type": "section", "text": {"type": "mrkdwn", "text": escape(text)}}

        prompts = "\n".join(f"• {p}" for p in self.prompts(tenant))
        return {
            "type": "home",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": messages.HOME_TITLE}},
                section(messages.HOME_HOW),
                section(messages.home_skills(list(config.handlers))),
                section(messages.home_commands(config=self._profiles.editable)),
                section(f"{messages.ASSISTANT_PROMPTS_TITLE}:\n{prompts}"),
                *recent,
            ],
        }


async def permalink(client: AsyncWebClient, recent: Recent) -> str | None:
    """A link to the conversation's first message (a thread opens with it), or None when Slack
    gives none (a message deleted, a channel Parley has left): it is then listed without one."""
    try:
        response = await call(
            "chat.getPermalink", client.chat_getPermalink(channel=recent.channel, message_ts=recent.ts)
        )
    except PlatformError as exc:
        log.info("no permalink for %s/%s: %r", recent.channel, recent.ts, exc)
        return None
    found = response.get("permalink")
    return found if isinstance(found, str) and found.startswith("https://") else None


def recent_blocks(recent: Sequence[Recent], links: Sequence[str | None]) -> list[Block]:
    """The Home tab's "your recent conversations": a header, then one section per conversation
    (its title, escaped and cut, linked where it can be; where; when), or a line saying none."""
    blocks: list[Block] = [
        {"type": "divider"},
        {"type": "header", "text": {"type": "plain_text", "text": messages.HOME_RECENT_TITLE}},
    ]
    if not recent:
        return [*blocks, {"type": "context", "elements": [{"type": "mrkdwn", "text": messages.HOME_RECENT_NONE}]}]
    for r, url in zip(recent, links, strict=True):
        words = " ".join(r.title.split()) or "…"
        title = escape(words if len(words) <= TITLE_CHARS else words[: TITLE_CHARS - 1] + "…")
        if url is not None:
            title = link(url, title)
        if r.kind == "channel":
            where = f"<#{r.channel}>" if CHANNEL_ID.fullmatch(r.channel) else escape(r.channel)
        else:
            where = messages.HOME_RECENT_PANE if r.kind == "pane" else messages.HOME_RECENT_DM
        # Slack shows the time in the reader's own time zone; the fallback is for clients that cannot.
        fallback = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(r.at))
        when = f"<!date^{int(r.at)}^{{date_short_pretty}} at {{time}}|{fallback}>"
        text = messages.home_recent(f"*{title}*", where, when)
        blocks.append({"type": "section", "text": {"type": "mrkdwn", "text": text}})
    return blocks
