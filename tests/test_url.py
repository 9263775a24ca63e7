"""Redis URLs: what each scheme is parsed into, and a clear ConfigurationError naming the
option for every bad value."""

from __future__ import annotations

import re
import ssl

import pytest

from aioredq import App, ConfigurationError
from aioredq._url import parse_url


def test_each_scheme_is_parsed_into_its_parts() -> None:
    t = parse_url("rediss://alice:p%40ss@db.local:6380/3?ssl_cert_reqs=optional&client_name=w")
    assert (t.scheme, t.hosts, t.db, t.username, t.password) == (
        "redis",
        (("db.local", 6380),),
        3,
        "alice",
        "p@ss",
    )
    assert t.tls is not None and t.tls.cert_reqs == "optional" and t.client_name == "w"
    t = parse_url("redis://h/0?password=q%26p&db=2")
    assert (t.password, t.db, t.tls) == ("q&p", 2, None)
    t = parse_url("redis+sentinel://:pw@a,b:26380/mymaster/4?sentinel_password=sp")
    assert (t.scheme, t.hosts, t.master, t.db) == (
        "sentinel",
        (("a", 26379), ("b", 26380)),
        "mymaster",
        4,
    )
    assert (t.password, t.sentinel_password) == ("pw", "sp")
    t = parse_url("rediss+cluster://[::1]:7000,10.0.0.2:7001?ssl_ca_certs=/ca.pem")
    assert t.hosts == (("::1", 7000), ("10.0.0.2", 7001)) and t.scheme == "cluster"
    assert t.tls is not None and t.tls.ca_certs == "/ca.pem"
    t = parse_url("unix:///run/redis.sock?db=1&password=x")
    assert (t.socket_path, t.db, t.password) == ("/run/redis.sock", 1, "x")
    context = ssl.create_default_context()
    t = parse_url("redis://h:1/0", context)
    assert t.tls is not None and t.tls.context is context


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://h:abc/0", "port 'abc' is not a number"),
        ("redis://h:70000/0", "port 70000 is out of range"),
        ("redis://h:1/x", "db 'x' is not a number"),
        ("redis://h:1/0?db=-1", "db '-1' is not a number"),
        ("redis://h:1/0?socket_timeout=1", "unknown URL parameter 'socket_timeout'"),
        ("redis://h:1/0?db=1&db=2", "'db' is given twice"),
        ("redis://a:1,b:2/0", "several hosts need redis+cluster:// or redis+sentinel://"),
        ("redis://h:1/0?ssl_ca_certs=/x", "ssl_ca_certs needs a TLS URL"),
        ("rediss://h:1/0?ssl_cert_reqs=maybe", "ssl_cert_reqs must be one of"),
        ("redis+sentinel://h:1", "a sentinel URL names its master"),
        ("redis://h:1/0?sentinel_password=x", "sentinel_password applies to redis+sentinel"),
        ("redis+cluster://h:1/2", "a cluster has only db 0"),
        ("unix://", "a unix URL names its socket"),
        ("http://h:1/0", "unsupported Redis URL"),
        ("redis://[::1/0", "unbalanced"),
        ("redis://u:p/w@h:1/0", "percent-encode the user name and password"),
        ("redis://h:1/0?db=0&word", "a URL parameter has no value (name=value)"),
    ],
)
def test_a_bad_url_is_a_configuration_error_naming_the_problem(url: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        App(url)


def test_ssl_context_cannot_be_combined_with_ssl_parameters_or_a_socket() -> None:
    context = ssl.create_default_context()
    with pytest.raises(ConfigurationError, match="either ssl= or the ssl_ca_certs"):
        App("rediss://h:1/0?ssl_ca_certs=/x", ssl=context)
    with pytest.raises(ConfigurationError, match="unix"):
        App("unix:///run/redis.sock", ssl=context)
    with pytest.raises(ConfigurationError, match="memory"):
        App("memory://", ssl=context)


def test_set_url_keeps_the_apps_ssl_context() -> None:
    context = ssl.create_default_context()
    app = App("redis://h:1/0", ssl=context)
    app.set_url("redis://other:2/0")
    assert app.target.tls is not None and app.target.tls.context is context
