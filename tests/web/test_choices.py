"""A write action's Confirm / Cancel in the web chat, over real WebSockets through the real adapter.

Parley serves the web chat (real runtime, Redis, dialogue manager) with the shipped sample
actions pointed at the sample service on loopback; the engine is the scripted stand-in, whose
structured-output answers are the model's decisions (a write call to open a ticket). The asker's
press runs the call once and every tab's buttons give way to the outcome; a second press, a
resent press, a stranger's press and malformed presses are each told apart.
"""

from __future__ import annotations

import re
import time
from typing import Any

from bot import messages
from tests.standin import ScriptedEngine
from tests.web.conftest import Tab, WebStack

HOSTILE = "Broken <img src=x onerror=alert(1)> keyboard"
TICKET = {"calls": [{"action": "open_ticket", "arguments": {"subject": HOSTILE, "body": "Dead on arrival."}}]}
ASK = "The keyboard from order A1001 arrived broken"  # routed to qa, where actions may answer


async def ask_for_a_ticket(tab: Tab, id: str = "ask-00000001") -> tuple[dict[str, Any], dict[str, Any]]:
    """Say what the scripted model answers with a write call; the question (done) and the offer."""
    await tab.say(ASK, id=id)
    ack = await tab.next("ack")
    _, done = await tab.answer(ack["answer"])
    offer = await tab.next("choice")
    assert offer["reply_to"] == ack["answer"] == done["id"]
    return done, offer


def press(offer: dict[str, Any], choice: str, id: str) -> dict[str, Any]:
    return {"type": "choice", "call": offer["call"], "choice": choice, "id": id}


async def saved(stack: WebStack, tab: Tab) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in (await stack.context(tab.visitor)).messages]


async def test_the_visitors_confirm_runs_the_call_once_and_every_tab_sees_it_settled(web_with_actions, sample_service):
    desk, _ = sample_service
    async with web_with_actions(ScriptedEngine(decisions=[TICKET])) as stack:
        tab = await stack.connect()
        other = await stack.connect(tab.token)  # a second tab of the same visitor
        question, offer = await ask_for_a_ticket(tab)
        what = f'open a support ticket titled "{HOSTILE}"'
        assert question["text"] == messages.confirm_action(what, 10)
        assert re.fullmatch(r"[0-9a-f]{16}", offer["call"])
        assert offer == {"type": "choice", "call": offer["call"], "what": what, "expires": offer["expires"]} | {
            "reply_to": question["id"]
        }
        assert time.time() < offer["expires"] <= time.time() + 601
        assert await other.next("choice") == offer
        assert desk.tickets == {}

        # Confirm, pressed in the first tab: the ticket is opened once, and the answer to the
        # press (the call's result) and the settled frame reach both tabs.
        await tab.send(press(offer, "confirm", "press-00000001"))
        answer = f"{tab.conversation}:press-00000001"
        _, result = await tab.answer(answer)
        assert result["text"].startswith("Done: open_ticket.") and '"status": "open"' in result["text"]
        settled = {"type": "settled", "call": offer["call"], "outcome": "confirmed"}
        assert await tab.next("settled") == settled
        assert (await other.answer(answer))[1] == result
        assert await other.next("settled") == settled
        assert [t["subject"] for t in desk.tickets.values()] == [HOSTILE]

        # The same frame resent (a reconnect), then a second press from the other tab: the
        # resend is a duplicate, the second press is told it was done, and nothing runs again.
        await tab.send(press(offer, "confirm", "press-00000001"))
        await other.send(press(offer, "cancel", "press-00000002"))
        _, again = await other.answer(f"{tab.conversation}:press-00000002")
        assert again["text"] == messages.action_already("confirmed")
        assert await other.next("settled") == settled  # the buttons of a tab that missed it go too
        assert len(desk.tickets) == 1
        # Turns of one conversation run in order: the resend was dropped before the second press ran.
        assert sum(f["type"] == "done" and f["id"] == answer for f in tab.frames) == 1
        assert (await saved(stack, tab))[2:] == [
            ("user", messages.CONFIRM_BUTTON),  # a press is kept as the label pressed
            ("assistant", result["text"]),
            ("user", messages.CANCEL_BUTTON),
            ("assistant", again["text"]),
        ]


async def test_cancel_a_strangers_press_and_malformed_presses(web_with_actions, sample_service):
    desk, _ = sample_service
    async with web_with_actions(ScriptedEngine(decisions=[TICKET])) as stack:
        tab = await stack.connect()
        _, offer = await ask_for_a_ticket(tab)

        # Malformed presses: an error frame naming the press (so the widget offers the buttons
        # again), the socket stays open, nothing reaches the dialogue manager.
        for frame, code in (
            ({**press(offer, "confirm", "press-bad00001"), "call": offer["call"].upper()}, "bad_call"),
            ({**press(offer, "confirm", "press-bad00002"), "call": offer["call"][:-1]}, "bad_call"),
            ({**press(offer, "confirm", "press-bad00003"), "choice": "yes"}, "bad_choice"),
            ({**press(offer, "confirm", "press-bad00004"), "choice": ["confirm"]}, "bad_choice"),
        ):
            await tab.send(frame)
            error = await tab.next("error")
            assert error == {"type": "error", "code": code, "text": messages.WEB_BAD_FRAME, "id": frame["id"]}
        await tab.send({"type": "choice", "call": offer["call"], "choice": "confirm"})  # no id: cannot name it
        assert await tab.next("error") == {"type": "error", "code": "bad_field", "text": messages.WEB_BAD_FRAME}

        # Another visitor presses Confirm with this call's id: it is not in their conversation,
        # so it is "expired" for them, and nothing runs or changes here.
        stranger = await stack.connect()
        await stranger.send(press(offer, "confirm", "press-00000009"))
        _, refused = await stranger.answer(f"{stranger.conversation}:press-00000009")
        assert refused["text"] == messages.ACTION_EXPIRED
        assert await stranger.next("settled") == {"type": "settled", "call": offer["call"], "outcome": "expired"}
        assert desk.tickets == {}

        # The asker cancels: nothing is done, the buttons say so.
        await tab.send(press(offer, "cancel", "press-00000001"))
        _, cancelled = await tab.answer(f"{tab.conversation}:press-00000001")
        assert cancelled["text"] == messages.ACTION_CANCELLED
        assert await tab.next("settled") == {"type": "settled", "call": offer["call"], "outcome": "cancelled"}
        assert desk.tickets == {}
        assert not [f for f in tab.frames if f["type"] == "settled" and f["outcome"] != "cancelled"]
        codes = [f["code"] for f in tab.frames if f["type"] == "error"]
        assert codes == ["bad_call", "bad_call", "bad_choice", "bad_choice", "bad_field"]
