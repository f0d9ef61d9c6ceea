"""Text on its way into Slack: shown as written, never as markup that notifies or links.

Slack reads `<…>` in message text (and in `markdown_text`) as a control sequence: `<!channel>`
pings everyone in the channel, `<https://x|Log in>` is a link whose target is hidden. A user
can put those in front of the model (translate copies spans through on purpose), and the
model can be steered into writing them, so everything Parley sends is escaped with Slack's
three escapes. The only sequences put back are mentions of people and channels that were
already in the user's own message (`mentions_in` reads them from the raw event): repeating
`<@U123>` to the one who wrote it is what the user expects, and pings nobody new.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A user mention (`<@U123>`, `<@W123|name>`) or a channel mention (`<#C123>`, `<#C123|general>`)
# as Slack writes it in an event. Linear: the id is bounded, and the label cannot contain `<`,
# so a failed attempt never rescans text another attempt has scanned.
_MENTION = re.compile(r"<(@[UW]|#[CG])([A-Z0-9]{1,30})(?:\|[^<>]{0,200})?>")
# The same mention once escaped; the label is dropped when it is put back (Slack shows the name).
_ESCAPED_MENTION = re.compile(r"&lt;(@[UW]|#[CG])([A-Z0-9]{1,30})(?:\|[^&<>]{0,200})?&gt;")


def escape(text: str) -> str:
    """Slack's three control characters, so the text stays text (no mentions, no links)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def link(url: str, label: str) -> str:
    """A link to `url` showing `label` (already escaped). The URL is escaped too, and a `|` in it,
    which would end the address early, is percent-encoded."""
    return f"<{escape(url).replace('|', '%7C')}|{label}>"


def mentions_in(raw: str) -> frozenset[str]:
    """The ids of the people and channels a raw event's text mentions (`U123`, `C123`). Text the
    user typed as characters arrives escaped (`&lt;@U123&gt;`), so it is not among them."""
    return frozenset(m.group(1)[1] + m.group(2) for m in _MENTION.finditer(raw))


def safe(text: str, allowed: Iterable[str] = ()) -> str:
    """`text` escaped, with the mentions of `allowed` ids (from `mentions_in`) live again."""
    escaped = escape(text)
    allowed = frozenset(allowed)
    if not allowed or "&lt;" not in escaped:
        return escaped

    def restore(m: re.Match[str]) -> str:
        return f"<{m.group(1)}{m.group(2)}>" if m.group(1)[1] + m.group(2) in allowed else m.group(0)

    return _ESCAPED_MENTION.sub(restore, escaped)


def encode_ids(ids: Iterable[str]) -> str:
    """Mention ids as a turn carries them to its sink (`Turn.handle` holds strings)."""
    return " ".join(sorted(ids))


def decode_ids(value: str | None) -> frozenset[str]:
    return frozenset((value or "").split())
