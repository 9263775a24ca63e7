"""Redis URLs: parsing and validation, TLS options, and redaction (a password is never printed).

A URL is parsed once, here, into a ``Target``; clients are built from its fields, never from
the URL text, so every scheme (plain, cluster, sentinel) gets the same options, TLS included.
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, unquote_plus, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import SentinelManagedConnection, SentinelManagedSSLConnection

from ._exceptions import ConfigurationError

DEFAULT_URL = "redis://localhost:6379/0"
DEFAULT_PORT = 6379
SENTINEL_PORT = 26379
Scheme = Literal["redis", "cluster", "sentinel", "memory"]
SCHEMES: dict[str, tuple[Scheme, bool]] = {
    "redis": ("redis", False),
    "rediss": ("redis", True),
    "unix": ("redis", False),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "memory": ("memory", False),
}
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_cert_reqs", "ssl_check_hostname")
CERT_REQS = ("none", "optional", "required")
SENTINEL_OPTIONS = ("sentinel_username", "sentinel_password")
OPTIONS = ("db", "username", "password", "client_name", *TLS_OPTIONS, *SENTINEL_OPTIONS)
# Query parameters whose value may be printed; every other value is shown as ***.
SHOWN = frozenset({"db", "client_name", *TLS_OPTIONS})
HIDDEN = "***"
_QUERY_PAIR = re.compile(r"([?&;])([^=&;#?]*)=([^&;#]*)")
_BARE_WORD = re.compile(r"([?&;])([^=&;#?]+)(?=$|[&;#])")


def redact(url: str) -> str:
    """``url`` fit for logs and errors: no password, whatever the URL's shape.

    Whatever precedes the last ``@`` is user info (a password may hold any character, even
    unencoded), and every query value but a few harmless ones is hidden, so a malformed URL
    is over-redacted rather than leaked.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    user_info, at, host_part = rest.rpartition("@")
    if at:
        user, colon, _ = user_info.partition(":")
        if not colon or any(c in user for c in "/?#&;="):
            user = ""  # no way to tell where a name would end: hide it all
        rest = f"{user}:{HIDDEN}@{host_part}"
    rest = _BARE_WORD.sub(rf"\1{HIDDEN}", _QUERY_PAIR.sub(_hide_value, rest))
    return f"{scheme}{sep}{rest}"


def _hide_value(match: re.Match[str]) -> str:
    sep, name, _ = match.groups()
    shown = unquote_plus(name).lower() in SHOWN
    return match.group(0) if shown else f"{sep}{name}={HIDDEN}"


def resolve_url(url: str | None) -> str:
    """``App(url)`` > ``$AIOREDQ_URL`` > the default."""
    return url or os.environ.get("AIOREDQ_URL") or DEFAULT_URL


@dataclass(frozen=True, slots=True)
class TLS:
    """TLS options of a target: the URL's ``ssl_*`` query parameters, or a given context."""

    ca_certs: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cert_reqs: str = "required"
    check_hostname: bool | None = None
    context: ssl.SSLContext | None = None


@dataclass(frozen=True, slots=True)
class Target:
    """A parsed Redis URL. Its repr and ``safe_url`` never show a password."""

    url: str = field(repr=False)
    scheme: Scheme
    hosts: tuple[tuple[str, int], ...] = ()
    socket_path: str | None = None
    db: int = 0
    master: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_name: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    tls: TLS | None = None

    @property
    def safe_url(self) -> str:
        return redact(self.url)

    def __repr__(self) -> str:
        return f"Target({self.safe_url!r})"

    def __str__(self) -> str:
        return self.safe_url


def parse_url(url: str, ssl_context: ssl.SSLContext | None = None) -> Target:
    """Parse and check ``url``; a bad value is a ConfigurationError naming the option.

    ``ssl_context`` turns TLS on for any TCP scheme (it replaces the ``ssl_*`` parameters).
    """
    safe = redact(url)
    name, sep, rest = url.partition("://")
    kind = SCHEMES.get(name.lower()) if sep else None
    if kind is None:
        raise ConfigurationError(
            f"unsupported Redis URL {safe!r}: use redis://, rediss://, unix://, "
            "redis+cluster://, redis+sentinel:// (rediss+... for TLS) or memory://"
        )
    scheme, tls_scheme = kind
    if scheme == "memory":
        if ssl_context is not None:
            raise ConfigurationError("ssl= does not apply to memory://")
        return Target(url, "memory")
    try:
        parts = urlsplit(f"x://{rest}")
    except ValueError:
        raise ConfigurationError(f"cannot parse the Redis URL {safe!r}: unbalanced [ ]") from None
    if "@" in rest[len(parts.netloc) :]:
        # Part of the user info ended up in the path or query: echo nothing of it.
        raise ConfigurationError(
            f"cannot parse the Redis URL {safe!r}: percent-encode the user name and password "
            "(@ as %40, : as %3A, / as %2F, ? as %3F, # as %23, % as %25)"
        )
    query = _query(parts.query, safe)
    user_info, _, netloc = parts.netloc.rpartition("@")
    username, _, password = user_info.partition(":") if user_info else ("", "", "")
    fields: dict[str, Any] = {
        "username": query.pop("username", None) or unquote(username) or None,
        "password": query.pop("password", None) or unquote(password) or None,
        "client_name": query.pop("client_name", None),
    }
    db_text = query.pop("db", None)
    path = _place(fields, name.lower(), scheme, parts.path, netloc, query, ssl_context, safe)
    if len(path) > 1:
        raise ConfigurationError(f"{safe}: unexpected path /{'/'.join(path)}")
    db = _int("db", db_text if db_text is not None else (path[0] if path else "0"), safe)
    if scheme == "cluster" and db:
        raise ConfigurationError(f"{safe}: a cluster has only db 0")
    for option in SENTINEL_OPTIONS:
        if option in query:
            raise ConfigurationError(f"{safe}: {option} applies to redis+sentinel:// only")
    tls = _tls(query, tls_scheme, ssl_context, safe)
    return Target(url, scheme, db=db, tls=tls, **fields)


def _place(
    fields: dict[str, Any],
    name: str,
    scheme: str,
    raw_path: str,
    netloc: str,
    query: dict[str, str],
    ssl_context: ssl.SSLContext | None,
    safe: str,
) -> list[str]:
    """Where the server is (a socket, sentinels and a master, or hosts), into ``fields``;
    returns what is left of the path (the db, if any)."""
    path = [unquote(p) for p in raw_path.split("/") if p]
    if name == "unix":
        if not raw_path:
            raise ConfigurationError(f"{safe}: a unix URL names its socket: unix:///path/to.sock")
        fields["socket_path"] = unquote(raw_path)
        path = []
        if ssl_context is not None:
            raise ConfigurationError("ssl= does not apply to unix:// sockets")
    elif scheme == "sentinel":
        if not path:
            raise ConfigurationError(
                f"{safe}: a sentinel URL names its master: "
                "redis+sentinel://host:port[,host:port]/master-name[/db]"
            )
        fields["master"], path = path[0], path[1:]
        fields["sentinel_username"] = query.pop("sentinel_username", None)
        fields["sentinel_password"] = query.pop("sentinel_password", None)
        fields["hosts"] = _hosts(netloc, SENTINEL_PORT, safe, several=True)
    else:
        fields["hosts"] = _hosts(netloc, DEFAULT_PORT, safe, several=scheme == "cluster")
    return path


def _query(text: str, safe: str) -> dict[str, str]:
    query: dict[str, str] = {}
    for piece in filter(None, text.split("&")):
        if "=" not in piece:  # a bare word might be a password typed in the wrong place
            raise ConfigurationError(f"{safe}: a URL parameter has no value (name=value)")
        key, value = (unquote_plus(part) for part in piece.split("=", 1))
        option = key.lower()
        if option not in OPTIONS:
            raise ConfigurationError(
                f"{safe}: unknown URL parameter {key!r} (known: {', '.join(OPTIONS)})"
            )
        if option in query:
            raise ConfigurationError(f"{safe}: URL parameter {key!r} is given twice")
        query[option] = value
    return query


def _hosts(netloc: str, default: int, safe: str, *, several: bool) -> tuple[tuple[str, int], ...]:
    items = netloc.split(",") if netloc else [""]
    if len(items) > 1 and not several:
        raise ConfigurationError(
            f"{safe}: several hosts need redis+cluster:// or redis+sentinel://"
        )
    hosts = []
    for item in items:
        if item.startswith("["):  # [IPv6]:port
            host, _, tail = item[1:].partition("]")
            port_text = tail[1:] if tail.startswith(":") else ""
        else:
            host, _, port_text = item.partition(":")
        port = _int("port", port_text, safe) if port_text else default
        if not 0 < port < 65536:
            raise ConfigurationError(f"{safe}: port {port} is out of range (1-65535)")
        hosts.append((unquote(host) or "localhost", port))
    return tuple(hosts)


def _int(option: str, text: str, safe: str) -> int:
    if not text.isdigit():
        raise ConfigurationError(f"{safe}: {option} {text!r} is not a number")
    return int(text)


def _tls(
    query: dict[str, str], tls_scheme: bool, context: ssl.SSLContext | None, safe: str
) -> TLS | None:
    given = [option for option in TLS_OPTIONS if option in query]
    if context is not None:
        if given:
            raise ConfigurationError(
                f"{safe}: give either ssl= or the {', '.join(given)} URL parameter(s)"
            )
        return TLS(context=context)
    if not tls_scheme:
        if given:
            raise ConfigurationError(
                f"{safe}: {given[0]} needs a TLS URL (rediss://, rediss+cluster://, "
                "rediss+sentinel://) or App(..., ssl=SSLContext)"
            )
        return None
    reqs = query.get("ssl_cert_reqs", "required").lower()
    if reqs not in CERT_REQS:
        raise ConfigurationError(
            f"{safe}: ssl_cert_reqs must be one of {', '.join(CERT_REQS)}, "
            f"got {query['ssl_cert_reqs']!r}"
        )
    check = query.get("ssl_check_hostname")
    if check is not None and check.lower() not in ("true", "false", "yes", "no", "1", "0"):
        raise ConfigurationError(f"{safe}: ssl_check_hostname must be true or false")
    return TLS(
        ca_certs=query.get("ssl_ca_certs") or None,
        certfile=query.get("ssl_certfile") or None,
        keyfile=query.get("ssl_keyfile") or None,
        cert_reqs=reqs,
        check_hostname=None if check is None else check.lower() in ("true", "yes", "1"),
    )


# building clients ------------------------------------------------------------------------------
class ContextSSLConnection(aioredis.SSLConnection):
    """A TLS connection with the application's own ``ssl.SSLContext``."""

    def __init__(self, *, ssl_context: ssl.SSLContext, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.given_context = ssl_context

    def _connection_arguments(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "ssl": self.given_context}


class _SentinelContextSSLConnection(SentinelManagedConnection, ContextSSLConnection):
    """A master's connection found through Sentinel, over TLS with the given context."""


def tls_kwargs(tls: TLS | None, *, sentinel_managed: bool = False) -> dict[str, Any]:
    """redis-py connection kwargs (``connection_class`` included) for these TLS options.

    Files are checked here, when the first client is made: a missing certificate is a
    configuration error, not an unreachable Redis to retry.
    """
    if tls is None:
        return {"connection_class": SentinelManagedConnection} if sentinel_managed else {}
    if tls.context is not None:
        cls: type = _SentinelContextSSLConnection if sentinel_managed else ContextSSLConnection
        return {"connection_class": cls, "ssl_context": tls.context}
    for option, path in (
        ("ssl_ca_certs", tls.ca_certs),
        ("ssl_certfile", tls.certfile),
        ("ssl_keyfile", tls.keyfile),
    ):
        if path is not None and not os.path.isfile(path):
            raise ConfigurationError(f"{option}: no such file {path!r}")
    kwargs: dict[str, Any] = {
        "connection_class": (
            SentinelManagedSSLConnection if sentinel_managed else aioredis.SSLConnection
        ),
        "ssl_ca_certs": tls.ca_certs,
        "ssl_certfile": tls.certfile,
        "ssl_keyfile": tls.keyfile,
        "ssl_cert_reqs": tls.cert_reqs,
    }
    if tls.check_hostname is not None:
        kwargs["ssl_check_hostname"] = tls.check_hostname
    return kwargs


def auth_kwargs(target: Target) -> dict[str, Any]:
    """User, password, db and client name for the data connections."""
    kwargs: dict[str, Any] = {"db": target.db}
    for option in ("username", "password", "client_name"):
        value = getattr(target, option)
        if value is not None:
            kwargs[option] = value
    return kwargs


def redis_kwargs(target: Target) -> dict[str, Any]:
    """``ConnectionPool`` kwargs for a redis://, rediss:// or unix:// target."""
    kwargs = auth_kwargs(target)
    if target.socket_path is not None:
        return {
            **kwargs,
            "connection_class": aioredis.UnixDomainSocketConnection,
            "path": target.socket_path,
        }
    host, port = target.hosts[0]
    kwargs.update(host=host, port=port, connection_class=aioredis.Connection)
    return {**kwargs, **tls_kwargs(target.tls)}


def sentinel_kwargs(target: Target) -> dict[str, Any]:
    """Kwargs for the connections to the sentinels themselves (TLS like the masters)."""
    kwargs: dict[str, Any] = {}
    if target.sentinel_username is not None:
        kwargs["username"] = target.sentinel_username
    if target.sentinel_password is not None:
        kwargs["password"] = target.sentinel_password
    return {**kwargs, **tls_kwargs(target.tls)}
