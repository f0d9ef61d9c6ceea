"""Fixtures for routing, KB, moderation and translation: the real default embedder (USE
multilingual), and the MiniLM ONNX files built by `parley engine --install-only` (tests/run.sh)
under the engine home."""

from __future__ import annotations

import pytest

from bot.config import EmbeddingSettings, LogSettings, Settings
from bot.engine.launcher import EnginePaths, ensure_embedder, ensure_installed
from bot.routing.embeddings import MultilingualEmbedder
from tests.conftest import engine_settings


@pytest.fixture(scope="session")
def embedder_dir():
    settings = engine_settings()
    paths = ensure_installed(settings)
    return ensure_embedder(paths)


@pytest.fixture(scope="session")
def embedder():
    return MultilingualEmbedder.create()


@pytest.fixture
def settings():
    return Settings(log=LogSettings(_env_file=None), embed=EmbeddingSettings(_env_file=None), engine=engine_settings())


__all__ = ["EnginePaths"]
