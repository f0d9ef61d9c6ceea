"""The dialogue core's fixtures (`build`, the module's embedder), shared with tests/unit."""

from tests.unit.conftest import embedder
from tests.unit.test_dialogue_core import build

__all__ = ["build", "embedder"]
