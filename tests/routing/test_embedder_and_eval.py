"""The local embedder against the torch model it was exported from, and both evals with floors."""

import json
import subprocess
from pathlib import Path

import numpy as np

from bot.config import KBSettings, RoutingSettings
from bot.engine import embedder_model
from bot.engine.launcher import EnginePaths
from bot.knowledge.base import KnowledgeBase
from bot.routing.embeddings import LocalEmbedder
from bot.routing.router import Router
from bot.tools.evaluate import eval_kb, eval_routing
from tests.conftest import engine_settings

ROOT = Path(__file__).parents[2]
TEXTS = [
    "hi",
    "How do I reset my password?",
    "translate to German: see you tomorrow",
    "Wie kann ich mein Abo kündigen? " * 8,
    "<@U123> :smile: https://example.com/a",
]


def test_onnx_files_match_the_torch_model(embedder_dir):
    """The exported graphs (pooling and normalisation included) against the torch model in the engine venv."""
    python = EnginePaths(engine_settings().home).python
    out = subprocess.run(
        [str(python), "-P", embedder_model.__file__, "--reference"],
        input=json.dumps(TEXTS),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    reference = np.array(json.loads(out.stdout))
    fp32 = (LocalEmbedder(embedder_dir).embed_sync(TEXTS) * reference).sum(axis=1)
    int8 = (LocalEmbedder(embedder_dir, model="model-int8.onnx").embed_sync(TEXTS) * reference).sum(axis=1)
    assert fp32.min() >= 0.999, fp32
    assert int8.min() >= 0.95, int8  # measured 0.97-0.995: why fp32 is the default


async def test_routing_eval_floor(embedder):
    router = await Router.create(settings=RoutingSettings(_env_file=None), embedder=embedder, llm=None)
    report = await eval_routing(router, None, lambda _: None)
    assert report.total >= 150
    assert report.accuracy >= 0.90, report.misses
    assert report.per_step["explicit"] and report.per_step["semantic"]


async def test_kb_eval_floor(embedder):
    kb = KnowledgeBase(redis=None, embedder=embedder, settings=KBSettings(_env_file=None), prefix="x")
    report = await eval_kb(kb, ROOT / "bot" / "data" / "kb-eval.jsonl", ROOT / "deploy" / "sample-kb", lambda _: None)
    assert report.hit_rate >= 0.9, report.misses
    assert report.refusal_rate >= 0.8, report.misses


def test_cli_eval_prints_figures_and_fails_clearly_on_bad_input(tmp_path):
    parley = str(ROOT / ".venv" / "bin" / "parley")
    env_file = tmp_path / "none.env"
    env_file.write_text("")
    good = subprocess.run(
        [parley, "--env-file", str(env_file), "eval", "routing"], capture_output=True, text=True, timeout=300
    )
    assert good.returncode == 0, good.stderr
    assert "accuracy:" in good.stdout and "confusion" in good.stdout and "median routing time" in good.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "intent": "chat"}\n{"text": 3}\n')
    out = subprocess.run(
        [parley, "--env-file", str(env_file), "eval", "routing", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1 and f"{bad}:2: needs a str field 'text'" in out.stderr
