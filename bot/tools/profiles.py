"""`parley profile show|set|clear`: a channel's settings as in force, and run-time changes to them.

A change is validated as the tenants file is, refused with one line when invalid, audited (the
person is this machine's user name), and in force on every replica within
`PARLEY_TENANTS_REFRESH` seconds (`bot.profiles`).
"""

from __future__ import annotations

import argparse
import os
import pwd
from collections.abc import Callable
from datetime import UTC, datetime

from bot.config import Settings
from bot.errors import ConfigError
from bot.profiles import Change, Profiles, format_value, open_profiles, parse_value
from bot.tenants import FIELD_NAMES, load_tenants


def add_arguments(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    profile = sub.add_parser(
        "profile",
        help="show or change a channel's settings (its profile) while Parley runs",
        description="A channel's profile is its tenant's settings with the channel's own from the tenants file "
        "and the changes made here, which every replica picks up within PARLEY_TENANTS_REFRESH seconds.",
    )
    actions = profile.add_subparsers(dest="profile_command", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the settings in force and where each comes from")
    show.add_argument("tenant", metavar="TENANT", help="Slack team, Discord guild or web site id")
    show.add_argument("channel", metavar="CHANNEL", nargs="?", default="", help="a channel id (default: the tenant)")
    change = actions.add_parser(
        "set",
        help="change one field of a channel's profile",
        description='VALUE is read as TOML (a list: \'["chat", "qa"]\', true, 3) or else as plain text. '
        f"Fields: {', '.join(FIELD_NAMES)}.",
    )
    change.add_argument("tenant", metavar="TENANT")
    change.add_argument("channel", metavar="CHANNEL")
    change.add_argument("field", metavar="FIELD")
    change.add_argument("value", metavar="VALUE")
    clear = actions.add_parser("clear", help="drop a run-time change (all of the channel's, without FIELD)")
    clear.add_argument("tenant", metavar="TENANT")
    clear.add_argument("channel", metavar="CHANNEL")
    clear.add_argument("field", metavar="FIELD", nargs="?")


def operator() -> str:
    """Who is changing a profile, for the audit: this machine's user (no setting to forge)."""
    return "cli:" + pwd.getpwuid(os.getuid()).pw_name


async def run_profile(settings: Settings, args: argparse.Namespace, say: Callable[[str], None]) -> None:
    from bot.runtime import connect_redis

    tenants = load_tenants(settings.tenants.file)
    redis = await connect_redis(settings, say)
    try:
        profiles = open_profiles(tenants, redis, prefix=settings.redis.prefix, refresh=settings.tenants.refresh)
        await profiles.load()
        if args.profile_command == "show":
            await _show(profiles, args.tenant, args.channel)
            return
        if redis is None:
            raise ConfigError("PARLEY_REDIS_URL", "run-time profiles are kept in Redis: set PARLEY_REDIS_URL")
        if args.profile_command == "set":
            change = await profiles.set(args.tenant, args.channel, args.field, parse_value(args.value), by=operator())
            changes = [change] if change else []
        else:
            changes = await profiles.clear(args.tenant, args.channel, args.field, by=operator())
        for line in map(_described, changes):
            print(line)
        if not changes:
            print(f"{args.tenant}/{args.channel}: nothing changed")
        else:
            say(f"in force on every replica within {settings.tenants.refresh:g} s")
    finally:
        if redis is not None:
            await redis.aclose()


async def _show(profiles: Profiles, tenant: str, channel: str) -> None:
    listed = tenant in profiles.tenants.listed
    where = f"tenant {tenant}" + ("" if listed else " (not listed: [default])")
    print(f"{where}, channel {channel}" if channel else where)
    for name, value, source in profiles.show(tenant, channel):
        print(f"  {name} = {format_value(value)}  # {source}")
    if not channel:
        print(f"channels with a profile: {', '.join(profiles.channels(tenant)) or 'none'}")
    recent = [c for c in await profiles.history(200) if c.tenant == tenant and (not channel or c.channel == channel)]
    if recent:
        print("recent changes:")
        for change in recent[:5]:
            print("  " + _described(change))


def _described(change: Change) -> str:
    at = datetime.fromtimestamp(change.at, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    new = "cleared" if change.new is None else f"= {format_value(change.new)}"
    old = "unset" if change.old is None else format_value(change.old)
    return f"{change.tenant}/{change.channel}: {change.field} {new} (was {old}) by {change.by} at {at}"
