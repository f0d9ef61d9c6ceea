"""`parley eval actions`' scoring, with the decisions scripted (the engine's side is test_engine.py's)."""

from __future__ import annotations

from pathlib import Path

from bot.errors import EngineFailed
from bot.tenants import load_tenants
from bot.tools.evaluate_actions import eval_actions, print_actions
from tests.fakes.actions import deciding
from tests.fakes.llm import URL, FakeLLM

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-actions.toml"


async def test_right_action_right_arguments_none_and_failures_are_counted_apart(tmp_path):
    rows = [
        '{"text": "where is A1002", "action": "order_status", "arguments": {"order_id": "A1002"}, "lang": "en"}',
        '{"text": "où est A1003", "action": "order_status", "arguments": {"order_id": "A1003"}, "lang": "fr"}',
        '{"text": "open a ticket", "action": "open_ticket", "lang": "en"}',
        '{"text": "hello", "action": "", "lang": "en"}',
        '{"text": "hi", "action": "", "lang": "fr"}',
    ]
    path = tmp_path / "eval.jsonl"
    path.write_text("\n".join(rows))
    llm = FakeLLM(
        decisions=[
            {"calls": [{"action": "order_status", "arguments": {"order_id": "a1002"}}]},  # right (case aside)
            {"calls": [{"action": "order_status", "arguments": {"order_id": "A1004"}}]},  # wrong argument
            {"calls": [{"action": "open_ticket", "arguments": {"subject": "s", "body": "b"}}]},  # right
            {"calls": []},  # right: none needed
            EngineFailed("cut short", url=URL),  # no decision
        ]
    )
    specs = list(load_tenants(SAMPLE).actions.values())
    actions = deciding(llm)
    report = await eval_actions(actions, specs, "You help.", path, "parley-demo", lambda line: None)
    t = report.overall
    assert (t.requests, t.right_action, t.right_arguments, t.failed) == (5, 4, 3, 1)
    assert (report.per_lang["fr"].right_action, report.per_lang["fr"].failed) == (1, 1)
    assert report.per_action["(none)"].right_action == 1
    printed: list[str] = []
    print_actions(report, printed.append)
    assert printed[0].startswith("model parley-demo: random weights")
    assert any("wanted order_status {'order_id': 'A1003'}, got order_status" in line for line in printed)
