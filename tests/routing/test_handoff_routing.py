"""The `handoff` intent with the real embedder and the trained model: requests for a person,
in any wording and language, are routed there by the semantic step, and messages that merely
resemble them are not. (The figures over many messages are `parley eval routing`'s; these are
the cases a reader can check by eye.)"""

from __future__ import annotations

import pytest

from bot.config import RoutingSettings
from bot.routing.router import HANDOFF, LABELS, Router, fit, training_examples


@pytest.fixture(scope="module")
async def model(embedder):
    settings = RoutingSettings(_env_file=None)
    return await fit(training_examples(settings), embedder, settings)


@pytest.fixture(scope="module")
def router(embedder, model):
    return Router(settings=RoutingSettings(_env_file=None), embedder=embedder, llm=None, model=model)


@pytest.mark.parametrize(
    "text",
    [
        "I want to talk to a person",  # the end-to-end tests' request
        "Can I talk to a human please?",
        "Please connect me to an agent",
        "this bot is useless, get me a human",
        "can someone call me back tomorrow morning?",
        "I'd like to escalate this",
        "please open a ticket for me",
        "could someone from sales get in touch about pricing for 300 seats",
        "Je voudrais parler à quelqu'un du support",
        "Necesito hablar con una persona, por favor",
        "Ich möchte mit einem Mitarbeiter sprechen",
        "担当者と話したいです",
        "我要人工客服",
    ],
)
async def test_requests_for_a_person_route_to_handoff(router, text):
    route = await router.route(text)
    assert (route.intent, route.step) == (HANDOFF, "semantic")


@pytest.mark.parametrize(
    "text",
    [
        "Bonjour tout le monde",
        "can i pay by bank transfer",
        "I asked for a human earlier, but you're doing fine, never mind",
        "こんにちは",
        "how do I add a person to my team workspace?",
        "conversation 13",
    ],
)
async def test_look_alikes_are_not_handoffs(router, text):
    assert (await router.route(text)).intent != HANDOFF


async def test_handoff_is_routed_only_where_allowed(router):
    route = await router.route("I want to talk to a person", allowed=("chat", "qa", "translate"))
    assert (route.intent, route.step) == ("chat", "disabled")
    assert HANDOFF in LABELS


async def test_a_handoff_wins_below_the_top_probability(embedder, model, router):
    """Recall matters more for a person: at `handoff_threshold` a handoff wins even when
    another intent is likelier, and with the threshold at 1 it never wins that way."""
    text = "the export keeps failing and maybe someone should look at it"
    probabilities = router.probabilities(text, (await embedder.embed([text]))[0])
    likeliest = max(probabilities, key=probabilities.__getitem__)
    assert likeliest != HANDOFF

    def at(threshold: float) -> Router:
        settings = RoutingSettings(_env_file=None, handoff_threshold=threshold)
        return Router(settings=settings, embedder=embedder, llm=None, model=model)

    assert (await at(probabilities[HANDOFF] - 1e-6).route(text)).intent == HANDOFF
    assert (await at(1.0).route(text)).intent == likeliest


@pytest.mark.parametrize(
    "text",
    [
        "tell me a story about cats. " * 1000,
        "I have been using the app for a while and " * 30 + "how do I export my notes as PDF?",
    ],
)
async def test_a_long_message_is_not_taken_for_a_request_for_a_person(router, text):
    # Length is a feature; one longer than nearly all training messages must not extrapolate.
    assert (await router.route(text)).intent != HANDOFF
