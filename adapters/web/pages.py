"""The web chat's files: the widget (`/widget.js`, `/widget.css`), with this site's title, colour,
greeting and wording put in, and a demo page that embeds it (`/`). Read and rendered once, when
the adapter is made, so a bad widget file stops start-up rather than a visitor's page load."""

from __future__ import annotations

import html
import json
from pathlib import Path

from aiohttp import web

from bot import messages
from bot.config import WebSettings

STATIC = Path(__file__).parent / "static"
CONFIG_SLOT = "/*PARLEY_CONFIG*/{}"  # where widget.js receives its settings
CACHE = "public, max-age=300"  # the widget's files: a change reaches visitors within minutes
# The demo page: its own files only, and a socket back to this server.
DEMO_CSP = (
    "default-src 'self'; connect-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
# The widget's words for a write action's buttons, from where every user-facing word is made.
CHOICE_TEXT = {
    "confirm": messages.CONFIRM_BUTTON,
    "cancel": messages.CANCEL_BUTTON,
    **{outcome: messages.action_settled(outcome, "you") for outcome in ("confirmed", "cancelled", "expired")},
}


class Pages:
    """The routes that serve files (`WebAdapter.application` mounts them)."""

    def __init__(self, settings: WebSettings) -> None:
        self._settings = settings
        self._widget_js = self._render_widget((STATIC / "widget.js").read_text(encoding="utf-8"))
        self._widget_css = (STATIC / "widget.css").read_text(encoding="utf-8")
        self._index = (STATIC / "index.html").read_text(encoding="utf-8")

    def _render_widget(self, source: str) -> str:
        s = self._settings
        config = {
            "title": s.title,
            "colour": s.colour,
            "greeting": s.greeting,
            "site": s.site,
            "maxChars": s.max_message_chars,
            "text": {**messages.WEB_WIDGET_TEXT, **CHOICE_TEXT},
        }
        if CONFIG_SLOT not in source:
            raise RuntimeError(f"widget.js has no {CONFIG_SLOT} for its settings")
        return source.replace(CONFIG_SLOT, json.dumps(config, ensure_ascii=True))

    async def widget_script(self, _: web.Request) -> web.Response:
        return _widget_file(self._widget_js, "application/javascript")

    async def widget_style(self, _: web.Request) -> web.Response:
        return _widget_file(self._widget_css, "text/css")

    async def demo_page(self, request: web.Request) -> web.Response:
        snippet = f'<script src="{request.scheme}://{request.host}/widget.js" async></script>'
        page = (
            self._index.replace("{{title}}", html.escape(self._settings.title))
            .replace("{{intro}}", html.escape(messages.WEB_DEMO_INTRO))
            .replace("{{snippet}}", html.escape(snippet))
        )
        return web.Response(
            text=page,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": DEMO_CSP,
                "X-Content-Type-Options": "nosniff",
                "Cache-Control": "no-cache",
            },
        )


def _widget_file(text: str, content_type: str) -> web.Response:
    return web.Response(
        text=text,
        content_type=content_type,
        charset="utf-8",
        headers={"Cache-Control": CACHE, "X-Content-Type-Options": "nosniff"},
    )
