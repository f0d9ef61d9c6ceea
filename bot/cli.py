"""The `parley` command line: one entry point, a sub-command per job.

Every command prints one clear line and exits non-zero on bad input or a
failed start; long work prints progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bot.config import Settings, load_settings
from bot.errors import ConfigError, ParleyError
from bot.logs import setup_logging

log = logging.getLogger("parley")


def say(line: str) -> None:
    print(f"parley: {line}", file=sys.stderr, flush=True)


async def _serve(settings: Settings) -> None:
    from bot.adapter import configured_adapters
    from bot.runtime import open_runtime
    from bot.server import run_adapters

    if not (settings.slack.enabled or settings.discord.enabled):
        raise ConfigError("SLACK_BOT_TOKEN", "no platform is configured: set SLACK_BOT_TOKEN or DISCORD_TOKEN (or try `parley chat`)")
    async with open_runtime(settings, say) as runtime:
        await run_adapters(runtime, configured_adapters(runtime))


async def _chat(settings: Settings) -> None:
    from bot.adapter import create_adapter
    from bot.runtime import open_runtime
    from bot.server import run_adapters

    async with open_runtime(settings, say) as runtime:
        console = create_adapter("console", runtime)
        assert console is not None  # the console needs no configuration
        await run_adapters(runtime, [console])


async def _engine(settings: Settings, install_only: bool) -> None:
    from bot.engine import ensure_demo_model, ensure_installed, local_engine

    if install_only:
        paths = await asyncio.to_thread(ensure_installed, settings.engine, say)
        if not settings.engine.model:
            await asyncio.to_thread(ensure_demo_model, paths, say)
        return
    async with local_engine(settings.engine, say) as base_url:
        say(f"point Parley at it with PARLEY_LLM_BASE_URL={base_url}; Ctrl-C stops it")
        await asyncio.Event().wait()


def _first_parley_error(exc: BaseException) -> ParleyError | None:
    """The ParleyError itself, or the first one inside a TaskGroup's exception group."""
    if isinstance(exc, ParleyError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            if (found := _first_parley_error(inner)) is not None:
                return found
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parley", description="A chat-bot server for Slack, Discord and web chat, answering with vLLM.")
    parser.add_argument("--env-file", default=".env", help="settings file read besides the environment (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run every configured adapter and the dialogue workers")
    sub.add_parser("chat", help="chat in the terminal (no platform account needed)")
    engine = sub.add_parser("engine", help="start a local vLLM server with the flags Parley relies on")
    engine.add_argument("--install-only", action="store_true", help="install vLLM (and build the demo model) and exit")
    from bot.bench import add_arguments as add_bench_arguments

    add_bench_arguments(sub.add_parser("bench", help="measure Parley against the same requests sent straight to vLLM"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings(args.env_file)
        setup_logging(settings.log)
        if args.command in ("chat", "bench") and logging.getLogger().level < logging.WARNING:
            # The terminal shows the chat or the figures; keep routine log lines out of it.
            logging.getLogger().setLevel(logging.WARNING)
        match args.command:
            case "serve":
                asyncio.run(_serve(settings))
            case "chat":
                asyncio.run(_chat(settings))
            case "engine":
                asyncio.run(_engine(settings, args.install_only))
            case "bench":
                from bot.bench import run_bench

                asyncio.run(run_bench(settings, args, say))
    except (ParleyError, BaseExceptionGroup) as exc:
        error = _first_parley_error(exc)
        if error is None:
            raise
        if isinstance(error, ConfigError):
            say(f"invalid setting {error.setting}: {error.reason}")
            return 2
        say(str(error))
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
