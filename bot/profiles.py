"""Per-channel profiles as every replica sees them: the tenants file's, with the overrides an
operator made at run time (`parley profile set`, or an adapter's admin command).

A profile's key is usually a channel; an adapter may name another (`Turn.profile`): a web page's
path (`page_profile`), or a Discord category or thread, the most specific that has a profile
(`first_profile`).

An override is validated as the file is (`Tenants.resolve`): an invalid value is refused with
a `TenantConfigError` and the profile in force stays. Every change is audited: who, when, which
field, the old and the new value, in a Redis stream and a log line.

Keys (under `PARLEY_REDIS_PREFIX`; a handful of fields set by people, so one hash; the `{profiles}`
tag keeps the three in one Redis Cluster slot, as the transaction that changes them needs):

    {prefix}:{profiles}            hash: JSON [tenant, channel, field] -> JSON value
    {prefix}:{profiles}:version    incremented by every change
    {prefix}:{profiles}:audit      stream of changes (at, by, tenant, channel, field, old, new), the last 10,000

Replicas pick changes up by polling the version every `PARLEY_TENANTS_REFRESH` seconds (one GET,
whatever the traffic) and reading the hash only when it moved. Not pub/sub: a message published
while a replica is reconnecting is lost for good, and a version read again is not; a poll also
needs no connection of its own. A turn reads its profile from memory and never waits on Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import WatchError

from bot.errors import StoreUnavailable, TenantConfigError
from bot.store.redis import as_text, cancel_and_wait, store_errors
from bot.tenants import FIELD_NAMES, TenantConfig, Tenants

log = logging.getLogger(__name__)

SOURCE = "run-time profile"  # what a refused override's error names instead of a file
AUDIT_LENGTH = 10_000  # changes the audit stream keeps (people make them: years of them)
Overrides = dict[tuple[str, str], dict[str, Any]]  # (tenant, channel): field -> value


@dataclass(frozen=True, slots=True)
class Change:
    """One field of one profile changed at run time; `old` or `new` is None when unset."""

    tenant: str
    channel: str
    field: str
    old: Any
    new: Any
    by: str
    at: float


def parse_value(text: str) -> Any:
    """A value as an operator types it: TOML (`["chat", "qa"]`, `true`, `3`, `"x"`), else the
    text itself (`de`, a system prompt), so the common case needs no quoting."""
    import tomllib

    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def format_value(value: Any) -> str:
    """A value as `parse_value` reads it back (JSON is TOML for these: text, lists, numbers,
    booleans), for whoever shows a profile or a change: the CLI, an adapter's admin command."""
    if hasattr(value, "model_dump"):
        value = value.model_dump()
    return json.dumps(list(value) if isinstance(value, tuple) else value, ensure_ascii=False)


class ProfileStore:
    """The overrides in Redis (the key layout above)."""

    def __init__(self, redis: Redis, *, prefix: str) -> None:
        self._redis = redis
        self._key = f"{prefix}:{{profiles}}"
        self._version = f"{self._key}:version"
        self._audit = f"{self._key}:audit"

    async def version(self) -> int:
        with store_errors("reading the profiles' version"):
            return int(await self._redis.get(self._version) or 0)

    async def read(self) -> tuple[int, Overrides]:
        """Every override, with the version they are of (read together)."""
        with store_errors("reading the profiles"):
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.get(self._version)
                pipe.hgetall(self._key)
                version, raw = await pipe.execute()
        return int(version or 0), _decode(raw)

    async def change(
        self, tenant: str, channel: str, fields: dict[str, Any], *, by: str, check: Callable[[dict[str, Any]], None]
    ) -> list[Change]:
        """Set (a value) or unset (None) `fields` of one profile, once `check` has passed the
        profile's overrides as they would be; a concurrent change makes it read and check again."""
        with store_errors("changing a profile"):
            async with self._redis.pipeline(transaction=True) as pipe:
                while True:
                    try:
                        await pipe.watch(self._key)
                        mine = _decode(await pipe.hgetall(self._key)).get((tenant, channel), {})
                        after = {**mine, **fields}
                        check({k: v for k, v in after.items() if v is not None})
                        now = time.time()
                        changes = [
                            Change(tenant, channel, name, mine.get(name), value, by, now)
                            for name, value in fields.items()
                            if mine.get(name) != value
                        ]
                        pipe.multi()
                        for change in changes:
                            field = json.dumps([tenant, channel, change.field])
                            if change.new is None:
                                pipe.hdel(self._key, field)
                            else:
                                pipe.hset(self._key, field, json.dumps(change.new))
                            pipe.xadd(self._audit, _entry(change), maxlen=AUDIT_LENGTH, approximate=True)  # type: ignore[arg-type]
                        if changes:
                            pipe.incr(self._version)
                        await pipe.execute()
                        return changes
                    except WatchError:
                        continue

    async def history(self, count: int = 20) -> list[Change]:
        """The last `count` changes, newest first."""
        with store_errors("reading the profiles' audit"):
            rows = await self._redis.xrevrange(self._audit, count=count) or []
        changes = []
        for _, raw in rows:
            row = {as_text(k): as_text(v) for k, v in (raw or {}).items()}
            changes.append(
                Change(
                    row["tenant"],
                    row["channel"],
                    row["field"],
                    json.loads(row["old"]) if row["old"] else None,
                    json.loads(row["new"]) if row["new"] else None,
                    row["by"],
                    float(row["at"]),
                )
            )
        return changes


def _entry(change: Change) -> dict[str, str]:
    return {
        "at": f"{change.at:.3f}",
        "by": change.by,
        "tenant": change.tenant,
        "channel": change.channel,
        "field": change.field,
        "old": "" if change.old is None else json.dumps(change.old),
        "new": "" if change.new is None else json.dumps(change.new),
    }


def _decode(raw: dict[Any, Any]) -> Overrides:
    overrides: Overrides = {}
    for key, value in raw.items():
        tenant, channel, field = json.loads(as_text(key))
        overrides.setdefault((tenant, channel), {})[field] = json.loads(as_text(value))
    return overrides


class Profiles:
    """The profiles in force: the file's, with the run-time overrides (`store`; None without
    Redis, where only the file's apply). Built once by the composition root; `profile` is what
    a turn calls (a dict look-up), `set` and `clear` what an admin command calls."""

    def __init__(self, tenants: Tenants, store: ProfileStore | None, *, refresh: float) -> None:
        self.tenants = tenants
        self._store = store
        self._refresh = refresh
        self._version = -1  # none read yet
        self.overrides: Overrides = {}
        self._resolved: dict[tuple[str, str], TenantConfig] = dict(tenants.channels)

    @property
    def editable(self) -> bool:
        """Whether a profile can be changed at run time (`set`, `clear`): changes are kept in Redis."""
        return self._store is not None

    def profile(self, tenant: str, channel: str) -> TenantConfig:
        """The settings of a turn in `channel` of `tenant`."""
        return self._resolved.get((tenant, channel)) or self.tenants.get(tenant)

    def first_profile(self, tenant: str, keys: Iterable[str]) -> str:
        """The first of `keys` (most specific first: a Discord thread, its channel, the channel's
        category) that has a profile of `tenant`'s in force, in the file or set at run time; ""
        when none has (the tenant's settings apply). A dict look-up per key, on the turn's path.
        Profiles do not stack: the one found applies whole, over the tenant's settings alone."""
        return next((key for key in keys if key and (tenant, key) in self._resolved), "")

    # -- keeping up with other replicas ----------------------------------------------------------

    async def load(self) -> bool:
        """Read the overrides if they changed since the last read; True if they had."""
        if self._store is None or await self._store.version() == self._version:
            return False
        version, overrides = await self._store.read()
        resolved = dict(self.tenants.channels)
        for (tenant, channel), fields in overrides.items():
            try:
                resolved[(tenant, channel)] = self.tenants.resolve(tenant, channel, fields, source=SOURCE)
            except TenantConfigError as exc:  # valid when set, not with this tenants file
                log.error("run-time profile ignored, the file's stays in force: %s", exc)
        self._version, self.overrides, self._resolved = version, overrides, resolved
        log.info("profiles: %s run-time overrides in force (version %s)", len(overrides), version)
        return True

    @asynccontextmanager
    async def watching(self) -> AsyncIterator[Profiles]:
        """Keep up with changes made anywhere until the block ends (no-op without Redis)."""
        if self._store is None:
            yield self
            return
        await self.load()  # a Redis that fails here stops the start, as any other store would
        task = asyncio.create_task(self._poll(), name="profiles")
        try:
            yield self
        finally:
            await cancel_and_wait(task)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            try:
                await self.load()
            except StoreUnavailable as exc:  # the profiles in force stay; tried again next time
                log.warning("profiles not refreshed: %s", exc)
            except Exception:  # the error boundary of the loop: it must outlive one bad read
                log.exception("profiles not refreshed")

    # -- changes by an operator ----------------------------------------------------------------

    async def set(self, tenant: str, channel: str, field: str, value: Any, *, by: str) -> Change | None:
        """Override `field` of `channel`'s profile (a value as the TOML file would hold it; see
        `parse_value` for text typed by a person). Raises `TenantConfigError` when invalid (the
        profile in force stays); None when the value was already in force."""
        if value is None:
            raise TenantConfigError(SOURCE, f"{tenant}.channels.{channel}", field, "no value given")
        changes = await self._change(tenant, channel, {field: value}, by=by)
        return changes[0] if changes else None

    async def clear(self, tenant: str, channel: str, field: str | None = None, *, by: str) -> list[Change]:
        """Drop one run-time override of `channel`'s profile, or all of them (the file's apply again)."""
        if self._store is None:
            return []
        await self.load()
        mine = self.overrides.get((tenant, channel), {})
        names = [field] if field is not None else list(mine)
        return await self._change(tenant, channel, dict.fromkeys(names), by=by)

    async def _change(self, tenant: str, channel: str, fields: dict[str, Any], *, by: str) -> list[Change]:
        if self._store is None:
            raise StoreUnavailable("run-time profiles are kept in Redis: set PARLEY_REDIS_URL")

        def check(overrides: dict[str, Any]) -> None:
            if any(value is not None for value in fields.values()):  # clearing is always allowed
                self.tenants.resolve(tenant, channel, overrides, source=SOURCE)

        try:
            changes = await self._store.change(tenant, channel, fields, by=by, check=check)
        except TenantConfigError as exc:
            log.info("profile change by %s refused: %s", by, exc)
            raise
        for change in changes:
            log.info(
                "profile %s/%s: %s changed from %s to %s by %s",
                tenant,
                channel,
                change.field,
                json.dumps(change.old),
                json.dumps(change.new),
                by,
            )
        await self.load()  # this replica at once; the others within PARLEY_TENANTS_REFRESH
        return changes

    async def history(self, count: int = 20) -> list[Change]:
        """The last `count` changes made at run time, newest first."""
        return [] if self._store is None else await self._store.history(count)

    def show(self, tenant: str, channel: str = "") -> list[tuple[str, Any, str]]:
        """Each field of a profile (of the tenant itself with no `channel`): its value in force
        and where that comes from: run-time, file (channel), file, or built-in."""
        config = self.profile(tenant, channel) if channel else self.tenants.get(tenant)
        overrides = self.overrides.get((tenant, channel), {}) if channel else {}
        own = self.tenants.channel_tables.get((tenant, channel), {}) if channel else {}
        table = self.tenants.tables.get(tenant, self.tenants.tables.get("default", {}))
        rows = []
        for name in FIELD_NAMES:
            head, _, key = name.partition(".")
            value = getattr(getattr(config, head), key) if key else getattr(config, name)

            def has(t: dict[str, Any], head: str = head, key: str = key) -> bool:
                return key in t.get(head, {}) if key else head in t

            if name in overrides:
                source = "run-time"
            elif has(own):
                source = "file (channel)"
            elif has(table):
                source = "file"
            else:
                source = "built-in"
            rows.append((name, value, source))
        return rows

    def page_profile(self, tenant: str, path: str) -> str:
        """The profile of a web page: the longest profile key of `tenant` that is `path` or a
        folder of it (`/pricing` serves `/pricing` and `/pricing/teams`, not `/pricingx`); ""
        (the tenant's settings) when none is. Keys that are not paths are channels: never matched."""
        best = ""
        for key in self.channels(tenant):
            folder = key.rstrip("/")  # "/pricing/" and "/pricing" both mean the folder; "/" the site
            within = path.rstrip("/") == folder or path.startswith(folder + "/")
            if key.startswith("/") and within and len(folder) >= len(best.rstrip("/")):
                best = key
        return best

    def channels(self, tenant: str) -> list[str]:
        """The channels of `tenant` that have a profile (in the file or set at run time)."""
        return sorted({c for t, c in (*self.tenants.channels, *self.overrides) if t == tenant})


def open_profiles(tenants: Tenants, redis: Redis | None, *, prefix: str, refresh: float) -> Profiles:
    return Profiles(tenants, ProfileStore(redis, prefix=prefix) if redis is not None else None, refresh=refresh)
