"""The `handoff` intent with the real local embedder: requests for a person are routed there by
the semantic step, with a clear margin (so the LLM is never asked to break a tie), and messages
that merely resemble them are not."""

from __future__ import annotations

import pytest

from bot.config import RoutingSettings
from bot.routing.router import HANDOFF, LABELS, Router


@pytest.fixture(scope="module")
async def router(embedder):
    return await Router.create(settings=RoutingSettings(_env_file=None), embedder=embedder, llm=None)


@pytest.mark.parametrize(
    "text",
    [
        "I want to talk to a person",  # the end-to-end tests' request
        "Can I talk to a human please?",
        "Please connect me to an agent",
        "this bot is useless, get me a human",
        "Je voudrais parler à quelqu'un du support",
    ],
)
async def test_requests_for_a_person_route_to_handoff_with_a_margin(router, text):
    route = await router.route(text)
    assert (route.intent, route.step) == (HANDOFF, "semantic")
    scores = sorted(router.scores((await router._embedder.embed([text]))[0]).values(), reverse=True)
    assert scores[0] - scores[1] >= 2 * RoutingSettings(_env_file=None).margin


@pytest.mark.parametrize(
    "text",
    [
        "are you chatgpt?",  # resembles "a person I can chat with" but asks for none
        "Bonjour tout le monde",
        "can i pay by bank transfer",
        "How do I contact support?",
        "Are you a bot or a human?",
        "conversation 13",  # close to "take over this chat"; without a cue it is not even a runner-up
    ],
)
async def test_look_alikes_are_not_handoffs(router, text):
    assert (await router.route(text)).intent != HANDOFF


async def test_handoff_is_routed_only_where_allowed(router):
    route = await router.route("I want to talk to a person", allowed=("chat", "qa", "translate"))
    assert (route.intent, route.step) == ("chat", "disabled")
    assert HANDOFF in LABELS


async def test_translate_behind_a_dropped_handoff_still_needs_its_cue(router):
    # Ranked handoff, then translate, by embeddings. With neither cue in the text neither may win:
    # dropping handoff must not leave translate on top.
    text = "What is Parley?"
    scores = router.scores((await router._embedder.embed([text]))[0])
    assert sorted(scores, key=scores.get, reverse=True)[:2] == [HANDOFF, "translate"]
    assert (await router.route(text)).intent == "chat"
