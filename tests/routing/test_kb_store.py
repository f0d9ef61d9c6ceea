"""Ingest into a real Redis: unchanged files do nothing, changed ones are replaced, removed
ones go; a URL-list file is fetched from a loopback HTTP server."""

import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from bot.config import KBSettings
from bot.knowledge.base import KnowledgeBase, load_documents, read_documents

SAMPLE = Path(__file__).parents[2] / "deploy" / "sample-kb"


@pytest.fixture
def kb(redis, embedder, make_settings):
    return KnowledgeBase(
        redis=redis, embedder=embedder, settings=KBSettings(_env_file=None), prefix=make_settings().redis.prefix
    )


async def test_ingest_is_incremental(kb, tmp_path):
    folder = tmp_path / "kb"
    shutil.copytree(SAMPLE, folder)
    first = await kb.ingest("t", load_documents(folder))
    assert first.added == 13 and first.chunks > 13
    again = await kb.ingest("t", load_documents(folder))
    assert (again.added, again.updated, again.unchanged, again.removed, again.chunks) == (0, 0, 13, 0, 0)

    (folder / "support.md").write_text(
        "# Contacting support\n\nSupport is open on Saturdays from 9:00 to 12:00 only.\n"
    )
    (folder / "sso.md").unlink()
    changed = await kb.ingest("t", load_documents(folder))
    assert (changed.updated, changed.removed, changed.unchanged) == (1, 1, 11)
    index = await kb.index("t")
    assert "sso.md" not in {c.source for c in index.chunks}
    found = await kb.retrieve("t", "Is support open on Saturday?")
    assert found.hits[0].chunk.source == "support.md" and "Saturdays" in found.hits[0].chunk.text
    assert found.evidence.covered  # "Saturday" is in the new text
    assert not any("Friday, 8:00" in c.text for c in index.chunks)  # the old chunks went


async def test_a_replica_reads_the_version_again_after_recheck_seconds(kb, redis, embedder, tmp_path):
    folder = tmp_path / "kb"
    shutil.copytree(SAMPLE, folder)
    await kb.ingest("r", load_documents(folder))

    def replica(recheck):
        settings = KBSettings(_env_file=None, recheck=recheck)
        return KnowledgeBase(redis=redis, embedder=embedder, settings=settings, prefix=kb._prefix)

    trusting, checking = replica(3600), replica(0)
    before = {c.source for c in (await trusting.index("r")).chunks}
    assert before == {c.source for c in (await checking.index("r")).chunks} and "sso.md" in before
    (folder / "sso.md").unlink()
    await kb.ingest("r", load_documents(folder))
    assert "sso.md" not in {c.source for c in (await kb.index("r")).chunks}  # its own ingest: at once
    assert "sso.md" not in {c.source for c in (await checking.index("r")).chunks}
    assert {c.source for c in (await trusting.index("r")).chunks} == before  # within its recheck time


async def test_retrieval_cites_and_refuses(kb):
    await kb.ingest("t2", load_documents(SAMPLE))
    found = await kb.retrieve("t2", "What are the API rate limits?")
    hits = found.hits
    assert hits[0].chunk.source == "api.html" and "120 requests per minute" in hits[0].chunk.text
    assert "https://developers.quillstack.example/api" in hits[0].chunk.citation
    assert found.evidence.covered and not found.evidence.borderline
    # The lexical side is rebuilt from the chunks loaded from Redis, row for row.
    index = await kb.index("t2")
    assert index.lexical.size == len(index.chunks) == len(index.vectors)
    sourdough = await kb.retrieve("t2", "How do I bake sourdough bread?")
    assert len(sourdough.hits) == kb.top_k and not sourdough.evidence.covered
    assert {"sourdough", "bread"} <= set(sourdough.evidence.missing)
    nothing = await kb.retrieve("no-such-kb", "How do I reset my password?")
    assert nothing.hits == [] and not nothing.evidence.covered


async def test_url_list_is_fetched_over_http(kb, tmp_path):
    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(SAMPLE), **kwargs)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        urls = tmp_path / "pages.urls"
        urls.write_text(f"# the help centre\n{base}/api.html\n{base}/billing.md\n")
        # Loopback is fetched only when allowed (tests/security/test_ssrf.py shows the refusals).
        loaded = await read_documents(urls, settings=KBSettings(_env_file=None, fetch_allow="127.0.0.1/32"))
        docs = loaded.documents
    finally:
        server.shutdown()
        server.server_close()
    assert [d.source for d in docs] == [f"{base}/api.html", f"{base}/billing.md"]
    assert docs[0].title == "Quillstack API and webhooks"
    stats = await kb.ingest("t3", docs)
    assert stats.added == 2
    found = await kb.retrieve("t3", "Can I pay with PayPal?")
    assert found.hits and found.hits[0].chunk.source.endswith("/billing.md") and found.evidence.covered
