"""The real default embedder (USE multilingual), shared by the knowledge tests that need one."""

from __future__ import annotations

import pytest

from bot.routing.embeddings import MultilingualEmbedder


@pytest.fixture(scope="session")
def embedder() -> MultilingualEmbedder:
    return MultilingualEmbedder.create()
