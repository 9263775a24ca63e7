"""``aioredq acl``: the least-privilege ``ACL SETUSER`` line for an app.

It grants the keys of every handler's queue or stream (the name and its auxiliary keys, which
share one prefix by the key layout), the handlers' channels and patterns, and the commands
that running, ``inspect`` and ``dead`` send, as declared next to the code that sends them.
"""

from __future__ import annotations

import re

from . import _connection
from ._app import App
from ._handlers import StreamHandler, SubscribeHandler, TaskHandler
from ._transports import admin, keys, pubsub, queue, results, stream

_GLOB = re.compile(r"([*?\[\]\\])")
# Redis 7.2 and newer also get CLIENT SETINFO from redis-py (its name and version); Redis 7.0
# refuses the name in ACL SETUSER, and redis-py carries on when the server refuses it.
NEWER_SERVERS = "+client|setinfo"


def glob_escape(text: str) -> str:
    """``text`` as a literal ACL key or channel pattern."""
    return _GLOB.sub(r"\\\1", text)


def _token(text: str) -> str:
    """One ``ACL SETUSER`` argument, quoted for redis-cli when it has spaces or quotes."""
    if text and not re.search(r"[\s\"'\\]", text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def acl_rules(app: App) -> tuple[list[str], list[str], list[str]]:
    """The key patterns, channel patterns and commands that ``app`` needs."""
    key_rules: list[str] = []
    channels: list[str] = []
    commands: list[str] = [*_connection.COMMANDS]
    if app.target.db:
        commands += _connection.DB_COMMANDS
    if app.target.scheme == "cluster":
        commands += _connection.CLUSTER_COMMANDS
    for h in app.handlers:
        if isinstance(h, TaskHandler | StreamHandler):
            key_rules += [f"~{glob_escape(h.key)}", f"~{glob_escape(keys.aux(h.key, ''))}*"]
        if isinstance(h, TaskHandler):
            commands += [*queue.COMMANDS, *admin.TASK_COMMANDS, *results.CANCEL_COMMANDS]
            if h.spec.result_ttl is not None:
                commands += results.COMMANDS
        elif isinstance(h, StreamHandler):
            commands += [*stream.COMMANDS, *admin.STREAM_COMMANDS]
        else:
            assert isinstance(h, SubscribeHandler)
            if h.spec.pattern is not None:
                # PSUBSCRIBE is checked against the user's channel patterns literally.
                channels.append(f"&{h.spec.pattern}")
                commands += pubsub.COMMANDS["pattern"]
            else:
                channels += [f"&{glob_escape(c)}" for c in h.spec.channels]
                commands += pubsub.COMMANDS["sharded" if h.spec.sharded else "channels"]
    return (
        list(dict.fromkeys(key_rules)),
        list(dict.fromkeys(channels)),
        sorted(set(commands)),
    )


def acl_line(app: App, user: str) -> str:
    """``ACL SETUSER`` for ``user``: only what ``app`` needs. It sets no password (add
    ``>password`` or ``#<sha256>``) and resets only permissions, so it can be run again to
    update an existing user."""
    key_rules, channels, commands = acl_rules(app)
    words = ["ACL", "SETUSER", user, "on", "resetkeys", *key_rules, "resetchannels", *channels]
    words += ["-@all", *(f"+{c}" for c in commands)]
    return " ".join(_token(w) for w in words)
