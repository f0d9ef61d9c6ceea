"""Native tool calling (`PARLEY_ACTIONS_CALLING=native`) through the real LLM client, against
the scripted stand-in engine speaking the OpenAI protocol: the allowed actions go as `tools`
(sorted, as the catalogue is), `tool_choice` is auto, and the calls the engine's parser
returns come back as (action, arguments) of allowed actions only. The real engine's side of
it is tests/actions/test_engine.py's."""

from __future__ import annotations

from pathlib import Path

from bot.actions.loop import check
from bot.config import ActionsSettings, LLMSettings
from bot.llm.client import LLMClient
from bot.tenants import load_tenants
from tests.fakes.actions import deciding
from tests.standin import ScriptedEngine

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-actions.toml"
ASKED = [{"role": "user", "content": "Where is my order A1002?"}]


async def test_calls_come_back_from_the_engines_tool_calls():
    specs = list(load_tenants(SAMPLE).actions.values())
    engine = ScriptedEngine(
        decisions=[
            {
                "calls": [
                    {"action": "order_status", "arguments": {"order_id": "A1002"}},
                    {"action": "delete_everything", "arguments": {}},  # not an allowed action
                    {"action": "order_status", "arguments": "A1003"},  # not a JSON object
                ]
            }
        ]
    )
    async with engine.serving() as url, LLMClient(LLMSettings(_env_file=None, base_url=url)) as llm:
        actions = deciding(llm, ActionsSettings(_env_file=None, calling="native"))
        picks = await actions.decide(ASKED, specs, 4, None)
    [request] = engine.requests
    assert request["tool_choice"] == "auto" and "structured_outputs" not in request
    assert [t["function"]["name"] for t in request["tools"]] == ["open_ticket", "order_status"]
    assert request["messages"] == ASKED  # no "decide" instruction: the model calls tools itself
    assert [(spec.name, arguments) for spec, arguments in picks] == [
        ("order_status", {"order_id": "A1002"}),
        ("order_status", "A1003"),
    ]
    error = check(picks[1][0], picks[1][1])
    assert error is not None and "JSON object" in error.reason


async def test_no_tool_call_is_no_action():
    specs = list(load_tenants(SAMPLE).actions.values())
    engine = ScriptedEngine()
    async with engine.serving() as url, LLMClient(LLMSettings(_env_file=None, base_url=url)) as llm:
        picks = await deciding(llm, ActionsSettings(_env_file=None, calling="native")).decide(ASKED, specs, 4, None)
    assert picks == []
