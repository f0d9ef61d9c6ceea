"""A web page's own settings: the site's profile for the page the visitor writes from (its path
or a folder of it) through the real web chat adapter, dialogue manager and Redis, with the
scripted engine recording the prompt it was sent; a malformed page is refused clearly."""

from __future__ import annotations

import logging
from pathlib import Path

from bot.config import TenantsSettings
from tests.standin import ScriptedEngine
from tests.web.conftest import SITE, serving, web_settings

PRICING_PROMPT = "You answer questions about Acme's prices."


async def test_a_pages_profile_gives_its_system_prompt(make_settings, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.INFO)
    tenants = tmp_path / "tenants.toml"
    tenants.write_text(f'[tenants."{SITE}".channels."/pricing"]\nsystem_prompt = "{PRICING_PROMPT}"\n')
    engine = ScriptedEngine("Ten euros a month.")
    async with engine.serving() as url:
        settings = make_settings(llm_url=url, web=web_settings(), tenants=TenantsSettings(_env_file=None, file=tenants))
        async with serving(settings) as stack:
            tab = await stack.connect()
            for id_, page in (("on-pricing-page", "/pricing/teams"), ("on-the-home-page", "/")):
                await tab.send({"type": "message", "id": id_, "text": "How much is it?", "page": page})
                await tab.answer((await tab.next("ack"))["answer"])
            await tab.send({"type": "message", "id": "bad-page-01", "text": "hi", "page": "pricing"})
            refused = await tab.next("error")
    prompts = [r["messages"][0]["content"] for r in engine.requests if r.get("stream")]
    assert prompts[0] == PRICING_PROMPT and prompts[-1] != PRICING_PROMPT
    assert (refused["id"], refused["code"]) == ("bad-page-01", "bad_field")
    assert "page must be a path" in caplog.text  # the reason, logged; the visitor is told to reload
