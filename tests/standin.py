"""The scripted OpenAI-protocol stand-in for the engine, kept in `bot/tools/standin.py` since
`parley loadtest --standin` serves it too; the tests import it from here as before."""

from bot.tools.standin import MODEL, ScriptedEngine, Streamed

__all__ = ["MODEL", "ScriptedEngine", "Streamed"]
