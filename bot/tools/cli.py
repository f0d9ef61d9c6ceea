"""The `parley` command line: one entry point, a sub-command per job.

Every command prints one clear line and exits non-zero on bad input or a
failed start; long work prints progress to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Settings, load_settings
from bot.errors import ConfigError, ParleyError
from bot.ops.logs import setup_logging

if TYPE_CHECKING:
    from bot.adapter import Adapter
    from bot.llm.client import LLMClient
    from bot.runtime import Runtime

log = logging.getLogger("parley")


def say(line: str) -> None:
    print(f"parley: {line}", file=sys.stderr, flush=True)


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StopSignals:
    """SIGTERM, SIGINT and SIGHUP, for the one command this process runs: each ends it in order.

    Python's defaults end the process at once on SIGTERM (what systemd, Docker and every
    supervisor send) and SIGHUP, skipping every `finally`: the local engine, which runs in a
    session of its own, would outlive Parley still holding its port. Here a signal either asks
    a serving command to stop (inside `serving()`: `parley serve` drains its turns in flight),
    or at any other time (start-up, a benchmark, the shutdown itself) cancels the command, so
    that its context managers unwind and stop what they started. A second signal while the
    engine is stopping cancels that wait too, and the engine is killed at once.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self._stop = asyncio.Event()
        self._serving = False
        self._task: asyncio.Task[Any] | None = None

    def run(self, command: Coroutine[Any, Any, int | None]) -> int:
        """`asyncio.run(command)` with the signals handled; the command's exit status, or
        128 + the signal's number when a signal cut it short (the shell's convention)."""
        return asyncio.run(self._main(command))

    async def _main(self, command: Coroutine[Any, Any, int | None]) -> int:
        loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            return await command or 0
        except asyncio.CancelledError:
            if self.received is None:
                raise
            return 128 + self.received
        finally:
            for sig in STOP_SIGNALS:
                loop.remove_signal_handler(sig)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("%s received: stopping", sig.name)
        self.received = self.received or sig
        if self._serving:
            self._stop.set()
        elif self._task is not None:
            self._task.cancel()

    @contextmanager
    def serving(self) -> Iterator[asyncio.Event]:
        """While inside, a signal sets the event yielded instead of cancelling the command."""
        self._serving = True
        try:
            yield self._stop
        finally:
            self._serving = False


@asynccontextmanager
async def _started(settings: Settings) -> AsyncIterator[Runtime]:
    """The runtime of this process, its start-up heap frozen (`freeze_heap`)."""
    from bot.runtime import freeze_heap, open_runtime

    async with open_runtime(settings, say) as runtime:
        freeze_heap()
        yield runtime


async def _serve(settings: Settings, signals: StopSignals) -> None:
    from bot.adapter import configured_adapters
    from bot.server import run_adapters

    if not (settings.slack.enabled or settings.discord.enabled or settings.web.enabled):
        raise ConfigError(
            "SLACK_BOT_TOKEN",
            "no platform is configured: set SLACK_BOT_TOKEN, DISCORD_TOKEN or PARLEY_WEB_ENABLED "
            "(or try `parley chat`)",
        )
    async with _started(settings) as runtime:
        with signals.serving() as stop:
            await run_adapters(runtime, configured_adapters(runtime.adapter_context()), stop=stop, ops=True)


async def _chat(settings: Settings, signals: StopSignals) -> None:
    from bot.adapter import create_adapter
    from bot.server import run_adapters

    async with _started(settings) as runtime:
        console = create_adapter("console", runtime.adapter_context())
        assert console is not None  # the console needs no configuration
        with signals.serving() as stop:
            await run_adapters(runtime, [console], stop=stop)


async def _chat_web(settings: Settings, signals: StopSignals) -> None:
    """`parley chat --web`: the web chat on this machine only, with the console chat's runtime."""
    from bot.adapter import create_adapter
    from bot.server import run_adapters

    settings = settings.model_copy(
        update={"web": settings.web.model_copy(update={"enabled": True, "host": "127.0.0.1"})}
    )
    async with _started(settings) as runtime:
        web = create_adapter("web", runtime.adapter_context())
        assert web is not None  # enabled above
        announce = asyncio.create_task(_announce_web(web))
        try:
            with signals.serving() as stop:
                await run_adapters(runtime, [web], stop=stop)
        finally:
            announce.cancel()
            await asyncio.gather(announce, return_exceptions=True)


async def _announce_web(web: Adapter) -> None:
    """Print the URL once the port is bound, and open it where a browser can show it: on a
    headless machine webbrowser would start a text browser in this terminal. From a thread,
    as some launchers wait for the browser to exit."""
    import os
    import threading
    import webbrowser

    ready: asyncio.Event | None = getattr(web, "ready", None)  # the web adapter sets it once its port is bound
    if ready is not None:
        await ready.wait()
    url = f"http://127.0.0.1:{getattr(web, 'port', None)}/"
    say(f"web chat at {url} (Ctrl-C stops it)")
    if sys.platform in ("darwin", "win32") or os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        threading.Thread(target=webbrowser.open, args=(url,), name="open-browser", daemon=True).start()


async def _engine(settings: Settings, install_only: bool, signals: StopSignals) -> None:
    from bot.engine.launcher import ensure_demo_model, ensure_embedder, ensure_installed, local_engine

    if install_only:
        paths = await asyncio.to_thread(ensure_installed, settings.engine, say)
        if not settings.engine.model:
            await asyncio.to_thread(ensure_demo_model, paths, say)
        if not settings.embed.base_url:
            await asyncio.to_thread(ensure_embedder, paths, say)
        return
    async with local_engine(settings.engine, say) as base_url:
        say(f"point Parley at it with PARLEY_LLM_BASE_URL={base_url}; Ctrl-C stops it")
        with signals.serving() as stop:
            await stop.wait()


async def _kb_ingest(settings: Settings, path: Path, tenant: str | None, channel: str | None = None) -> None:
    from bot.errors import KnowledgeBaseError
    from bot.knowledge.base import KnowledgeBase, read_documents
    from bot.profiles import open_profiles
    from bot.runtime import connect_redis, open_embedder
    from bot.tenants import load_tenants

    tenants = load_tenants(settings.tenants.file)
    if channel and not tenant:
        raise KnowledgeBaseError("--channel names a channel of a tenant: give --tenant too")
    if tenant and tenant not in tenants.listed:
        say(f"tenant {tenant} is not listed in {tenants.path}: it uses the default knowledge base")
    loaded = await read_documents(path, settings=settings.kb, progress=say)  # a line per skipped URL, with why
    documents = loaded.documents
    redis = await connect_redis(settings, say)
    if redis is None:
        raise ConfigError(
            "PARLEY_REDIS_URL", "the knowledge base is kept in Redis: set PARLEY_REDIS_URL or start a local Redis"
        )
    embedder = await open_embedder(settings, say)
    try:
        profiles = open_profiles(tenants, redis, prefix=settings.redis.prefix, refresh=settings.tenants.refresh)
        await profiles.load()  # a channel's knowledge base may have been set at run time
        config = profiles.profile(tenant, channel or "") if tenant else tenants.default
        kb = KnowledgeBase(redis=redis, embedder=embedder, settings=settings.kb, prefix=settings.redis.prefix)
        stats = await kb.ingest(config.knowledge_base, documents, keep={s.source for s in loaded.skipped}, progress=say)
    finally:
        await embedder.aclose()
        await redis.aclose()
    print(
        f"knowledge base {config.knowledge_base!r}: {len(documents)} documents; {stats.added} added, "
        f"{stats.updated} updated, {stats.unchanged} unchanged, {stats.removed} removed; {stats.chunks} chunks embedded"
    )
    if loaded.skipped:  # the rest is ingested; the exit status still tells a script that not all was
        raise KnowledgeBaseError(
            f"{len(loaded.skipped)} of {len(documents) + len(loaded.skipped)} URLs skipped (reasons above)"
        )


def _eval_llm(settings: Settings, wanted: bool) -> LLMClient | None:
    """The engine client for an eval's `--llm`, which needs a running engine."""
    if not wanted:
        return None
    if not settings.llm.base_url:
        raise ConfigError("PARLEY_LLM_BASE_URL", "--llm needs a running engine: set PARLEY_LLM_BASE_URL")
    from bot.llm.client import LLMClient

    return LLMClient(settings.llm)


async def _eval(settings: Settings, args: argparse.Namespace) -> int:
    from bot.knowledge.base import KnowledgeBase, Ranking
    from bot.routing.router import Router
    from bot.runtime import open_embedder
    from bot.tenants import DATA
    from bot.tools import evaluate, evaluate_kb

    if args.target == "actions":
        return await _eval_actions(settings, args)
    embedder = await open_embedder(settings, say)
    try:
        if args.target == "routing":
            llm = _eval_llm(settings, args.llm)
            try:
                if args.file is None:
                    report = await evaluate.cross_validate(settings.routing, embedder, args.cv, say)
                else:
                    router = await Router.create(settings=settings.routing, embedder=embedder, llm=llm)
                    report = await evaluate.eval_routing(router, args.file, say)
            finally:
                if llm is not None:
                    await llm.aclose()
            evaluate.print_routing(report)
            return 0
        kb = KnowledgeBase(redis=None, embedder=embedder, settings=settings.kb, prefix=settings.redis.prefix)
        kb_file = args.file or DATA / "kb-eval.jsonl"
        ranking: Ranking = "dense" if args.dense_only else "lexical" if args.lexical_only else "hybrid"
        kb_llm = _eval_llm(settings, args.llm)
        try:
            kb_report = await evaluate_kb.eval_kb(kb, kb_file, args.kb, say, ranking=ranking, llm=kb_llm)
        finally:
            if kb_llm is not None:
                await kb_llm.aclose()
        evaluate_kb.print_kb(kb_report)
        return 0
    finally:
        await embedder.aclose()


async def _eval_actions(settings: Settings, args: argparse.Namespace) -> int:
    from bot.engine.launcher import local_engine
    from bot.handlers import system_prompt
    from bot.llm.client import LLMClient
    from bot.ops.metrics import Metrics
    from bot.runtime import open_actions
    from bot.tenants import DATA, load_tenants
    from bot.tools.evaluate_actions import eval_actions, print_actions

    tenants = load_tenants(args.tenants)
    async with AsyncExitStack() as stack:
        base_url = settings.llm.base_url or await stack.enter_async_context(local_engine(settings.engine, say))
        llm = await stack.enter_async_context(LLMClient(settings.llm, base_url=base_url))
        actions, _ = await open_actions(settings, tenants, llm, None, Metrics(), stack)
        specs = actions.catalog.allowed(tenants.default, "")
        if not specs:
            raise ConfigError("PARLEY_TENANTS_FILE", f"{args.tenants}: the [default] tenant has no actions")
        report = await eval_actions(  # decisions only: no action is run
            actions,
            specs,
            system_prompt(settings, tenants.default),
            args.file or DATA / "actions-eval.jsonl",
            await llm.model(),
            say,
        )
    print_actions(report)
    return 0


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
    parser = argparse.ArgumentParser(
        prog="parley", description="A chat-bot server for Slack, Discord and web chat, answering with vLLM."
    )
    parser.add_argument("--env-file", default=".env", help="settings file read besides the environment (default: .env)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("serve", help="run every configured adapter and the dialogue workers")
    chat = sub.add_parser("chat", help="chat in the terminal (no platform account needed)")
    chat.add_argument(
        "--web",
        action="store_true",
        help="chat in the browser instead: serve the web chat on 127.0.0.1:PARLEY_WEB_PORT and print its URL",
    )
    engine = sub.add_parser("engine", help="start a local vLLM server with the flags Parley relies on")
    engine.add_argument("--install-only", action="store_true", help="install vLLM (and build the demo model) and exit")
    from bot.tools.bench import add_arguments as add_bench_arguments

    kb = sub.add_parser("kb", help="manage knowledge bases").add_subparsers(
        dest="kb_command", required=True, metavar="ACTION"
    )
    ingest = kb.add_parser(
        "ingest",
        help="load Markdown, text and HTML documents into a tenant's knowledge base",
        description="Load a folder of .md/.txt/.html files, one such file, or a URL-list file (.urls, or a .txt "
        "of URLs) into a tenant's knowledge base in Redis. Unchanged documents are skipped, changed ones "
        "replaced, and documents no longer in the source removed.",
    )
    ingest.add_argument("path", type=Path, metavar="PATH", help="a folder, a document, or a URL-list file")
    ingest.add_argument("--tenant", help="the tenant whose knowledge base to fill (default: the [default] one)")
    ingest.add_argument("--channel", help="the tenant's channel whose profile's knowledge base to fill")
    evals = sub.add_parser("eval", help="measure routing or knowledge-base retrieval on labelled JSONL")
    targets = evals.add_subparsers(dest="target", required=True, metavar="WHAT")
    routing = targets.add_parser(
        "routing",
        help="routing accuracy per step, confusion matrix, median routing time",
        description="Route each labelled line of FILE with the model trained on the training set; without FILE, "
        "cross-validate over the training set (each message routed by a model that never saw it).",
    )
    routing.add_argument(
        "file", type=Path, nargs="?", metavar="FILE", help='JSONL of {"text", "intent", "lang"?} kept out of training'
    )
    routing.add_argument(
        "--cv", type=int, default=5, metavar="K", help="folds of the cross-validation run without FILE (default 5)"
    )
    routing.add_argument(
        "--llm", action="store_true", help="let the LLM decide close calls (needs PARLEY_LLM_BASE_URL)"
    )
    kb_eval = targets.add_parser(
        "kb",
        help="retrieval (right document first, hit@k) and refusals, per language",
        description='Search a KB folder for each {"question", "answerable", "doc", "lang"?} line of FILE '
        "(default: the shipped set); report the right document first, hit@k, the unanswerable questions "
        "refused and the answerable ones refused, per language, and the retrieval time.",
    )
    kb_eval.add_argument("file", type=Path, nargs="?", metavar="FILE", help="JSONL of questions")
    kb_eval.add_argument("--kb", type=Path, required=True, metavar="PATH", help="the knowledge-base folder to search")
    kb_eval.add_argument(
        "--llm", action="store_true", help="let the LLM decide borderline evidence (needs PARLEY_LLM_BASE_URL)"
    )
    actions_eval = targets.add_parser(
        "actions",
        help="how often the model picks the right action with the right arguments, per language",
        description='Ask the model for the action decision of each {"text", "action", "arguments"?, "lang"?} line '
        "of FILE (default: the shipped set, for deploy/sample-actions.toml) with the actions of the tenants file, "
        "against PARLEY_LLM_BASE_URL (unset: a local engine is started).",
    )
    actions_eval.add_argument("file", type=Path, nargs="?", metavar="FILE", help="JSONL of requests")
    actions_eval.add_argument(
        "--tenants",
        type=Path,
        default=Path("deploy/sample-actions.toml"),
        metavar="PATH",
        help="the tenants file whose [default] actions are offered (default: deploy/sample-actions.toml)",
    )
    kb_ranking = kb_eval.add_mutually_exclusive_group()
    kb_ranking.add_argument("--dense-only", action="store_true", help="rank by the embeddings alone (no BM25)")
    kb_ranking.add_argument("--lexical-only", action="store_true", help="rank by BM25 alone (no embeddings)")

    bench = sub.add_parser(
        "bench",
        help="measure Parley against the same requests sent straight to vLLM (or: bench fairness)",
    )
    add_bench_arguments(bench)
    from bot.tools.fairness import add_arguments as add_fairness_arguments
    from bot.tools.history import add_arguments as add_history_arguments

    benches = bench.add_subparsers(dest="bench", metavar="{fairness,history}")
    add_history_arguments(
        benches.add_parser(
            "history",
            help="long conversations over the history budget: prefix-cache hits with compaction vs a sliding window",
            description="K conversations of T turns through the dialogue manager with a small history budget, "
            "in alternating rounds with Parley's compaction and with a sliding window, against a vLLM server; "
            "prints the prefix-cache hit rate of prompt tokens from the third turn on and over all turns.",
        )
    )
    add_fairness_arguments(
        benches.add_parser(
            "fairness",
            help="one heavy user against light ones on a saturated engine: first come first served vs the fair queue",
            description="Light users at a steady rate and one heavy user at --heavy times that, through the dialogue "
            "manager, with fewer engine slots than the load needs; prints the light users' first-token time p50/p95 "
            "alone, with the heavy user first come first served, and with the fair queue.",
        )
    )
    from bot.tools.loadtest import add_arguments as add_loadtest_arguments

    add_loadtest_arguments(
        sub.add_parser(
            "loadtest",
            help="web visitors over the real serving path: ack, Parley's own time per turn, CPU, capacity",
            description="Start `parley serve` with the web chat as a process of its own and drive K visitors of T "
            "turns over the chat's WebSocket, against an engine URL or the built-in stand-in; print ack times, "
            "Parley's own share of each turn (with the stand-in), turns/s, Parley's CPU per turn and inbox depth. "
            "--sweep then finds the offered rate at which Parley's added p99 stays under 10 ms, per setting.",
        )
    )
    sample = sub.add_parser(
        "sample-service",
        help="serve the demo order and ticket service the sample actions call (deploy/sample-actions.toml)",
    )
    sample.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    report = sub.add_parser(
        "report",
        help="answers, handoffs, resolution without a person and 👍/👎, per tenant and day",
        description="Print, per tenant and UTC day, the answers given, the conversations, the handoffs to "
        "people, the conversations that needed no person, and the 👍/👎 on answers (read from Redis).",
    )
    report.add_argument(
        "--days", type=_days, default=7, metavar="N", help="the last N days, today included (default: 7)"
    )
    report.add_argument("--tenant", metavar="T", help="only this tenant (Slack team, Discord guild or web site id)")
    report.add_argument("--json", action="store_true", help="print JSON instead of a table")
    report.add_argument(
        "--by",
        choices=("tenant", "user", "channel"),
        default="tenant",
        help="tenant: the figures above (default); user or channel: the usage meter, one line per tenant, "
        "user or channel and day, with turns, prompt and completion tokens, seconds and turns refused over a quota",
    )
    from bot.tools.profiles import add_arguments as add_profile_arguments

    add_profile_arguments(sub)
    return parser


def _days(value: str) -> int:
    try:
        days = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of days: {value!r}") from None
    if not 1 <= days <= 400:
        raise argparse.ArgumentTypeError("must be between 1 and 400 (figures are kept about 400 days)")
    return days


async def _done(work: Awaitable[object]) -> None:
    """`work` with its result dropped: for commands whose result is not an exit status."""
    await work


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    signals = StopSignals()
    try:
        settings = load_settings(args.env_file)
        setup_logging(settings.log)
        quiet = ("chat", "bench", "loadtest", "kb", "eval", "report", "profile")
        if args.command in quiet and logging.getLogger().level < logging.WARNING:
            # The terminal shows the chat or the figures; keep routine log lines out of it.
            logging.getLogger().setLevel(logging.WARNING)
        match args.command:
            case "serve":
                return signals.run(_serve(settings, signals))
            case "chat":
                return signals.run(_chat_web(settings, signals) if args.web else _chat(settings, signals))
            case "engine":
                return signals.run(_engine(settings, args.install_only, signals))
            case "bench" if args.bench == "fairness":
                from bot.tools.fairness import run_fairness

                return signals.run(run_fairness(settings, args, say))
            case "bench" if args.bench == "history":
                from bot.tools.history import run_history

                return signals.run(run_history(settings, args, say))
            case "bench":
                from bot.tools.bench import run_bench

                return signals.run(run_bench(settings, args, say))
            case "loadtest":
                from bot.tools.loadtest import run_loadtest

                return signals.run(run_loadtest(settings, args, say))
            case "kb":
                return signals.run(_kb_ingest(settings, args.path, args.tenant, args.channel))
            case "eval":
                return signals.run(_eval(settings, args))
            case "sample-service":
                from bot.tools.sample_service import serve

                say(f"sample service on http://127.0.0.1:{args.port} (Ctrl-C stops it)")
                return signals.run(_done(serve(port=args.port)))
            case "report":
                from bot.tools.report import run_report

                printed = run_report(
                    settings, days=args.days, tenant=args.tenant, as_json=args.json, by=args.by, say=say
                )
                return signals.run(_done(printed))
            case "profile":
                from bot.tools.profiles import run_profile

                return signals.run(run_profile(settings, args, say))
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
