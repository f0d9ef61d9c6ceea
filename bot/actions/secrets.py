"""`{secret:NAME}` in an action's configuration (an HTTP action's headers, an MCP server's
environment and headers): filled from PARLEY_ACTIONS_SECRETS at the last moment, and their
values replaced in everything that could reach the model, the logs or the audit."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pydantic import SecretStr

from bot.actions.spec import SECRET

MIN_SCRUBBED = 4  # shorter secret values are not replaced in answers: they would hit ordinary text
SHOWN_SECRET = "[secret]"


class UnknownSecret(ValueError):
    """A `{secret:NAME}` whose NAME PARLEY_ACTIONS_SECRETS does not set; the message names the
    field that holds it and the secret, never a value."""

    def __init__(self, where: str, name: str) -> None:
        super().__init__(f"{where} names the secret {name}, which is not set (PARLEY_ACTIONS_SECRETS)")
        self.name = name


def fill_secrets(where: str, template: str, secrets: Mapping[str, SecretStr], used: list[str]) -> str:
    """`template` (the value of the field `where`) with each `{secret:NAME}` replaced by its
    value in `secrets`; the values filled in are appended to `used`. Shared by the HTTP and
    the MCP runner. Raises UnknownSecret for a name `secrets` lacks (then nothing is filled)."""
    missing = [s for s in SECRET.findall(template) if s not in secrets]
    if missing:
        raise UnknownSecret(where, missing[0])

    def fill(match: re.Match[str]) -> str:
        value = secrets[match.group(1)].get_secret_value()
        used.append(value)
        return value

    return SECRET.sub(fill, template)


def scrubbed(values: Iterable[str]) -> list[str]:
    """The secret values worth replacing in text (`scrub`): long enough not to hit ordinary
    text, longest first so one secret inside another leaves no tail."""
    return sorted({v for v in values if len(v) >= MIN_SCRUBBED}, key=len, reverse=True)


def scrub(text: str, secrets: Sequence[str]) -> str:
    """`text` with each of `secrets` (as `scrubbed` gives them) replaced by SHOWN_SECRET."""
    for secret in secrets:  # longest first, so one secret inside another leaves no tail
        text = text.replace(secret, SHOWN_SECRET)
    return text


def scrub_data(data: Any, secrets: Sequence[str]) -> Any:
    """`scrub` over every string (and key) of a JSON-able value."""
    if isinstance(data, str):
        return scrub(data, secrets)
    if isinstance(data, list):
        return [scrub_data(v, secrets) for v in data]
    if isinstance(data, dict):
        return {scrub(k, secrets): scrub_data(v, secrets) for k, v in data.items()}
    return data
