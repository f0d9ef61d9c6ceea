"""The decision against the real engine: vLLM's structured output over the decision schema of
the sample actions. The demo model's weights are random, so which action it picks means
nothing; what is checked is what Parley relies on with any model: the answer is JSON of the
schema's shape, names only allowed actions, and its arguments pass the actions' own schemas.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.actions.loop import check, decision_schema, tools, with_actions
from bot.actions.spec import ActionSpec
from bot.config import ActionsSettings
from bot.llm.client import LLMClient
from bot.tenants import load_tenants
from tests.fakes.actions import deciding

pytestmark = pytest.mark.engine

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-actions.toml"
ASKED = [
    "Where is my order A1002?",
    "My keyboard arrived broken, please open a ticket about it.",
    "Hello there!",
    "¿Dónde está mi pedido A1003?",
]


def bounded(spec: ActionSpec) -> ActionSpec:
    """The sample action with its strings capped at 40 characters: random weights write a string
    until its limit, and the whole decision must fit the request's 512 tokens (a real model
    stops on its own; a decision cut short is answered without actions)."""
    properties = {
        name: {**schema, "maxLength": min(schema.get("maxLength", 40), 40)}
        if schema.get("type") == "string"
        else schema
        for name, schema in spec.parameters["properties"].items()
    }
    return spec.model_copy(update={"parameters": {**spec.parameters, "properties": properties}})


async def test_decisions_from_the_engine_match_the_schema_whatever_the_model(engine, make_settings):
    specs = [bounded(spec) for spec in load_tenants(SAMPLE).actions.values()]
    settings = make_settings(llm_url=engine)
    async with LLMClient(settings.llm) as llm:
        actions = deciding(llm)
        system = with_actions("You are a support assistant.", specs)
        for most in (1, 3):
            for text in ASKED:
                picks = await actions.decide(
                    [{"role": "system", "content": system}, {"role": "user", "content": text}], specs, most, None
                )
                assert len(picks) <= most
                for spec, arguments in picks:
                    assert spec in specs
                    assert check(spec, arguments) is None, (text, spec.name, arguments)
    # The schema vLLM was given: one option per action, arguments of that action only.
    schema = decision_schema(specs, 2)
    assert [o["properties"]["action"]["enum"] for o in schema["properties"]["calls"]["items"]["anyOf"]] == [
        ["open_ticket"],
        ["order_status"],
    ]


async def test_native_tool_calling_is_served_by_the_engine(engine, make_settings):
    """The engine runs with `--enable-auto-tool-choice --tool-call-parser hermes` (the launcher's
    flags): a request with `tools` is accepted and what its parser finds is read as calls of
    allowed actions only. (With random weights it finds none: `auto` answers text.)"""
    specs = [bounded(spec) for spec in load_tenants(SAMPLE).actions.values()]
    settings = make_settings(llm_url=engine)
    async with LLMClient(settings.llm) as llm:
        actions = deciding(llm, ActionsSettings(_env_file=None, calling="native", decision_tokens=64))
        system = with_actions("You are a support assistant.", specs)
        picks = await actions.decide(
            [{"role": "system", "content": system}, {"role": "user", "content": ASKED[0]}], specs, 2, None
        )
        assert len(picks) <= 2 and all(spec in specs for spec, _ in picks)
        # The client's own reading of the engine's answer, before the allow-list.
        raw = await llm.tool_calls([{"role": "user", "content": ASKED[0]}], tools(specs), max_tokens=64)
        assert isinstance(raw, list) and all(isinstance(name, str) for name, _ in raw)
