"""Actions for tests that need the collaborator but no runner: an empty catalogue (or only
decisions against given specs), an audit that logs and counts without Redis."""

from __future__ import annotations

from bot.actions.audit import Audit
from bot.actions.loop import Actions, Catalog
from bot.config import ActionsSettings
from bot.llm.client import LLM
from bot.ops.metrics import Metrics


def deciding(llm: LLM, settings: ActionsSettings | None = None) -> Actions:
    """Actions that can decide (the LLM's part) and run nothing."""
    settings = settings or ActionsSettings(_env_file=None)
    return Actions(settings, Catalog({}, {}), llm, Audit(None, prefix="test", days=1, metrics=Metrics()))
