"""The learned routing decision: softmax regression over a message's embedding and a few cues.

Hand-set thresholds on example similarity were tuned until the shipped set passed and then
missed half the people who asked for a person on messages nobody had tuned on. A linear
model fitted on labelled messages in many languages generalises better, costs one small
matrix product per message, and trains in well under a second, so it is trained at start-up
from the shipped set plus the operator's examples: adding an example is editing a file.

`cross_validate` is how accuracy is reported (`parley eval routing --cv K`): every message
is routed by a model that never saw it.
"""

from __future__ import annotations

import json
import os
import random
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bot.errors import ConfigError

# Words that ask for a person or a translation, in the languages the training set covers.
# They are features with learned weights, not gates: a message can be a handoff without one.
# (Alternations of literals: linear time on any input.)
HANDOFF_CUE = re.compile(
    r"human|\bperson|people|some(?:one|body)|any(?:one|body)|\bagent|staff|\bteam|manager|supervisor|operator"
    r"|representative|\bsupport|(?<!-)\bcall|\breal\b|\bspeak|\btalk|ticket|escalat|callback"
    r"|mensch|mitarbeiter|jemand|rückruf|humain|conseiller|quelqu|rappel|persona|agente|operador|operatore|umano"
    r"|alguien|qualcuno|atendente|pessoa|richiam|llam|ligue|人工|客服|真人|转接|回电|担当|オペレーター|人間|電話|折り返し",
    re.IGNORECASE,
)
TRANSLATE_CUE = re.compile(
    r"translat|tradu|übersetz|ubersetz|vertaal|tłumacz|\bmeans?\b|\bsays?\b|\bsay\b|\bdire\b|\bdecir\b|\bdizer\b"
    r"|\bheißt\b|\bheisst\b|翻訳|訳して|訳す|翻译|怎么说|什么意思|意味|どう言",
    re.IGNORECASE,
)
_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af]")


def cues(text: str) -> list[float]:
    """The hand-made features beside the embedding: what the message names, and its shape."""
    return [
        1.0 if HANDOFF_CUE.search(text) else 0.0,
        1.0 if TRANSLATE_CUE.search(text) else 0.0,
        1.0 if ":" in text or "\n" in text.strip() else 0.0,  # a text to work on often follows a colon
        1.0 if "?" in text or "\uff1f" in text else 0.0,  # ? or the full-width one
        1.0 if _CJK.search(text) else 0.0,
        # Capped where most training messages end: a pasted page must not extrapolate (a cap
        # of 400 sent every long message to handoff).
        min(len(text), 120) / 100.0,
    ]


def features(texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
    return np.hstack([np.asarray(vectors, dtype=np.float32), np.array([cues(t) for t in texts], dtype=np.float32)])


@dataclass(frozen=True, slots=True)
class Example:
    text: str
    intent: str
    lang: str = "?"


def read_examples(path: Path, labels: Sequence[str]) -> list[Example]:
    """A JSONL file of {"text", "intent", "lang"?}; a bad line is a `ConfigError` naming it."""
    out = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError("PARLEY_ROUTING_TRAINING_FILE", f"cannot read {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, intent = row["text"], row["intent"]
        except (ValueError, KeyError, TypeError):
            raise ConfigError(
                "PARLEY_ROUTING_TRAINING_FILE", f"{path}:{number}: not a JSON object with text and intent"
            ) from None
        if not isinstance(text, str) or not text.strip() or intent not in labels:
            raise ConfigError(
                "PARLEY_ROUTING_TRAINING_FILE", f"{path}:{number}: text must be non-empty, intent one of {labels}"
            )
        out.append(Example(text, intent, str(row.get("lang") or "?")))
    return out


class IntentModel:
    """Multinomial logistic regression with L2, features standardised; `fit` makes one."""

    def __init__(
        self, labels: Sequence[str], weights: np.ndarray, bias: np.ndarray, mean: np.ndarray, scale: np.ndarray
    ):
        self.labels = tuple(labels)
        self._weights, self._bias, self._mean, self._scale = weights, bias, mean, scale

    @classmethod
    def fit(
        cls,
        x: np.ndarray,
        y: Sequence[str],
        labels: Sequence[str],
        *,
        l2: float = 0.1,
        class_weight: dict[str, float] | None = None,
        steps: int = 400,
        rate: float = 0.05,
    ) -> IntentModel:
        """Full-batch Adam on the weighted cross-entropy: deterministic, and ~0.3 s for a
        thousand messages. `class_weight` makes a class's mistakes cost more (a missed
        request for a person costs more than a person asked once too often)."""
        labels = tuple(labels)
        index = {label: i for i, label in enumerate(labels)}
        targets = np.zeros((len(y), len(labels)), dtype=np.float32)
        targets[np.arange(len(y)), [index[label] for label in y]] = 1.0
        weights_per_row = np.array([(class_weight or {}).get(label, 1.0) for label in y], dtype=np.float32)
        weights_per_row /= weights_per_row.mean()
        mean = x.mean(axis=0)
        scale = x.std(axis=0) + 1e-6
        z = (x - mean) / scale
        w = np.zeros((x.shape[1], len(labels)), dtype=np.float32)
        b = np.zeros(len(labels), dtype=np.float32)
        m_w, v_w, m_b, v_b = np.zeros_like(w), np.zeros_like(w), np.zeros_like(b), np.zeros_like(b)
        for step in range(1, steps + 1):
            p = _softmax(z @ w + b)
            error = (p - targets) * weights_per_row[:, None] / len(y)
            grad_w = z.T @ error + l2 * w
            grad_b = error.sum(axis=0)
            for param, grad, m, v in ((w, grad_w, m_w, v_w), (b, grad_b, m_b, v_b)):
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                param -= rate * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
        return cls(labels, w, b, mean, scale)

    def save(self, path: Path) -> None:
        """Write the model to `path` (.npz) atomically: a replica starting beside this one reads
        the whole file or none."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with partial.open("wb") as out:
            np.savez(
                out,
                labels=np.array(self.labels),
                weights=self._weights,
                bias=self._bias,
                mean=self._mean,
                scale=self._scale,
            )
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> IntentModel:
        with np.load(path, allow_pickle=False) as saved:
            return cls(
                [str(label) for label in saved["labels"]],
                saved["weights"],
                saved["bias"],
                saved["mean"],
                saved["scale"],
            )

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """One row of class probabilities per message, columns in `labels` order."""
        return _softmax(((np.atleast_2d(x) - self._mean) / self._scale) @ self._weights + self._bias)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def folds(examples: Sequence[Example], k: int, seed: int = 7) -> list[list[int]]:
    """`k` folds of example indexes, stratified by intent and language (each fold gets its
    share of, say, Japanese handoff requests), in a fixed shuffled order."""
    groups: dict[tuple[str, str], list[int]] = {}
    for i, example in enumerate(examples):
        groups.setdefault((example.intent, example.lang), []).append(i)
    rng = random.Random(seed)
    out: list[list[int]] = [[] for _ in range(k)]
    turn = 0
    for key in sorted(groups):
        members = groups[key]
        rng.shuffle(members)
        for i in members:
            out[turn % k].append(i)
            turn += 1
    return out


def complement(parts: Iterable[list[int]], held: list[int]) -> list[int]:
    held_set = set(held)
    return [i for part in parts for i in part if i not in held_set]
