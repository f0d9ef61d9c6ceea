"""The local embedder against the torch model it was exported from, and both evals with floors."""

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bot.config import KBSettings, RoutingSettings
from bot.engine import embedder_model
from bot.engine.launcher import EnginePaths
from bot.knowledge.base import KnowledgeBase
from bot.routing.embeddings import LocalEmbedder
from bot.routing.router import HANDOFF, Router
from bot.tenants import DATA
from bot.tools.evaluate import cross_validate, eval_routing
from bot.tools.evaluate_kb import eval_kb
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


async def test_routing_cross_validation_floor(embedder):
    """Accuracy measured the honest way: each training message routed by a model that never saw it."""
    report = await cross_validate(RoutingSettings(_env_file=None), embedder, 5, lambda _: None)
    assert report.total >= 900
    assert report.accuracy >= 0.93, report.misses
    routed, asked = report.recall(HANDOFF)
    assert routed / asked >= 0.93
    assert min(report.language_accuracy(lang) for lang in ("en", "fr", "es", "de", "ja", "zh", "pt", "it")) >= 0.85
    assert report.per_step["explicit"] and report.per_step["semantic"]


async def test_routing_eval_of_a_file(embedder, tmp_path):
    """`parley eval routing FILE`: the model trained on the training set routes the file's lines."""
    labelled = tmp_path / "set.jsonl"
    labelled.write_text(
        '{"text": "translate to German: see you tomorrow", "intent": "translate", "lang": "en"}\n'
        '{"text": "wie kündige ich mein Abo?", "intent": "qa", "lang": "de"}\n'
    )
    router = await Router.create(settings=RoutingSettings(_env_file=None), embedder=embedder, llm=None)
    report = await eval_routing(router, labelled, lambda _: None)
    assert (report.total, report.per_lang["de"]) == (2, 1)
    assert report.confusion[("translate", "translate")] == 1


async def test_kb_eval_floor(embedder, tmp_path):
    """Floors under the dev-set figures (with USE multilingual: top-1 92.1 %, hit@3 98.2 %,
    unanswerable refused by evidence 45 % and 85 % with the borderline ones the LLM is asked
    about, answerable refused 4.4 %). Evidence alone cannot refuse most in-domain unanswerable
    questions: the band sends those to the LLM, which this eval (no engine) does not ask."""
    kb = KnowledgeBase(redis=None, embedder=embedder, settings=KBSettings(_env_file=None), prefix="x")
    report = await eval_kb(kb, ROOT / "bot" / "data" / "kb-eval.jsonl", ROOT / "deploy" / "sample-kb", lambda _: None)
    overall = report.overall
    assert overall.answerable >= 100 and overall.unanswerable >= 30
    assert report.top1_rate >= 0.9, report.misses
    assert report.hit_rate >= 0.95, report.misses
    assert report.refusal_rate >= 0.4, report.misses
    assert (overall.refused + overall.unanswerable_checked) / overall.unanswerable >= 0.8, report.misses
    assert report.false_refusal_rate <= 0.06, report.misses
    assert {"en", "fr", "es", "de", "ja", "zh", "pt", "it"} <= set(report.per_lang)
    assert min(report.per_lang[lang].hit_rate for lang in report.per_lang) >= 0.8
    # A row without "lang" counts as "?"; an unanswerable one may have "doc": null.
    rows = tmp_path / "rows.jsonl"
    rows.write_text(
        '{"question": "How do I bake sourdough bread?", "doc": null, "answerable": false}\n'
        '{"question": "Can I pay with PayPal?", "doc": "billing.md", "answerable": true}\n'
    )
    small = await eval_kb(kb, rows, ROOT / "deploy" / "sample-kb", lambda _: None)
    assert set(small.per_lang) == {"?"} and (small.overall.refused, small.overall.top1) == (1, 1)
    assert small.cpu_seconds and small.seconds


def test_cli_eval_prints_figures_and_fails_clearly_on_bad_input(tmp_path):
    parley = str(ROOT / ".venv" / "bin" / "parley")
    env_file = tmp_path / "none.env"
    env_file.write_text("")
    good = subprocess.run(
        [parley, "--env-file", str(env_file), "eval", "routing"], capture_output=True, text=True, timeout=300
    )
    assert good.returncode == 0, good.stderr
    assert "cross-validation" in good.stdout and "confusion" in good.stdout and "CPU" in good.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi", "intent": "chat"}\n{"text": 3}\n')
    out = subprocess.run(
        [parley, "--env-file", str(env_file), "eval", "routing", str(bad)], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 1 and f"{bad}:2: needs a str field 'text'" in out.stderr


async def test_a_trained_model_is_cached_per_training_set_and_loaded_by_the_next_start(embedder, tmp_path, caplog):
    settings = RoutingSettings(_env_file=None)
    first = await Router.create(settings=settings, embedder=embedder, llm=None, cache=tmp_path)
    [saved] = tmp_path.glob("routing-*.npz")
    with caplog.at_level(logging.INFO, logger="bot.routing.router"):
        second = await Router.create(settings=settings, embedder=embedder, llm=None, cache=tmp_path)
    assert f"routing model loaded from {saved}" in caplog.text
    text = "can someone call me back?"
    vector = (await embedder.embed([text]))[0]
    assert second.probabilities(text, vector) == pytest.approx(first.probabilities(text, vector))
    # An added example is a new training set: trained again, beside the old file.
    training = tmp_path / "train.jsonl"
    added = {"text": "put me through to a human being", "intent": "handoff", "lang": "en"}
    training.write_text((DATA / "routing-train.jsonl").read_text() + json.dumps(added) + "\n")
    grown = settings.model_copy(update={"training_file": training})
    await Router.create(settings=grown, embedder=embedder, llm=None, cache=tmp_path)
    assert len(list(tmp_path.glob("routing-*.npz"))) == 2
