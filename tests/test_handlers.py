"""Declaring handlers: what is checked when the decorator runs, and what the handler object is.

Nothing here needs Redis: every mistake must surface at decoration time, before any connection.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

import pytest
from pydantic import BaseModel

from aioredq import (
    App,
    Backoff,
    ConfigurationError,
    Message,
    StreamHandler,
    SubscribeHandler,
    TaskHandler,
)


class Job(BaseModel):
    n: int


class Other(BaseModel):
    s: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


class NotBuildable:
    """A plain class: pydantic cannot build a validator for it."""

    def __init__(self, value: int) -> None:
        self.value = value


@pytest.fixture
def app() -> App:
    return App("memory://")


# what a user may declare ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "annotation", [str, bytes, dict, int, list[int], dict[str, int], Job, Point, Any, str | None]
)
def test_bodies_pydantic_can_validate_are_accepted(app: App, annotation: Any) -> None:
    async def handler(body):  # type: ignore[no-untyped-def]
        return body

    handler.__annotations__ = {"body": annotation}
    declared = app.task("jobs")(handler)
    assert isinstance(declared, TaskHandler)
    assert declared.body_type == annotation


def test_each_decorator_returns_its_handler_kind(app: App) -> None:
    @app.task("jobs")
    async def job(body: str) -> None: ...

    @app.stream("events", group="g")
    async def event(body: dict) -> None: ...

    @app.subscribe("news")
    async def news(body: str) -> None: ...

    assert isinstance(job, TaskHandler) and job.key == "jobs"
    assert isinstance(event, StreamHandler) and event.key == "events"
    assert isinstance(news, SubscribeHandler) and news.key == "news"
    assert [h.name for h in app.handlers] == ["job", "event", "news"]
    assert app.handler("job") is job and app.handler("events") is event


def test_a_handler_without_annotation_gets_anything(app: App) -> None:
    @app.task("jobs")
    async def untyped(body) -> None:  # type: ignore[no-untyped-def]
        ...

    assert untyped.codec.decode_text(b'{"a": 1}') == {"a": 1}


@pytest.mark.parametrize("name", ["message", "meta", "m", "ctx"])
def test_message_parameter_may_have_any_name(app: App, name: str) -> None:
    namespace: dict[str, Any] = {"Message": Message}
    exec(
        f"async def handler(body: str, {name}: Message) -> None:\n    return None",
        namespace,
    )
    declared = app.task("jobs")(namespace["handler"])
    assert declared.message_param == name


async def test_message_parameter_is_passed_whatever_its_name_and_kind(app: App) -> None:
    seen: list[tuple[str, Message]] = []
    message = Message(id="1", kind="task", name="jobs", channel="jobs", attempt=1, raw=b"x")

    @app.task("a")
    async def keyword_only(body: str, *, info: Message) -> None:
        seen.append((body, info))

    @app.task("c")
    async def optional(body: str, context: Optional[Message] = None) -> None:  # noqa: UP045
        seen.append((body, context))  # type: ignore[arg-type]

    @app.task("d")
    async def union(body: str, ctx: Message | None = None, flag: bool = True) -> None:
        seen.append((body, ctx))  # type: ignore[arg-type]

    for handler in (keyword_only, optional, union):
        await handler.invoke("hi", message)
    assert seen == [("hi", message)] * 3


async def test_calling_the_declared_handler_calls_the_function(app: App) -> None:
    calls: list[tuple[Job, Message | None]] = []

    @app.task("jobs")
    async def work(job: Job, message: Message | None = None) -> str:
        """Does the work."""
        calls.append((job, message))
        return "done"

    assert await work(Job(n=1)) == "done"
    assert calls == [(Job(n=1), None)]
    # It still looks like the function to tools that introspect it.
    assert work.__name__ == "work"
    assert work.__doc__ == "Does the work."
    assert work.__wrapped__ is work.func
    assert work.__module__ == __name__


def test_two_handlers_on_one_queue_with_the_same_type_are_allowed(app: App) -> None:
    @app.task("jobs")
    async def first(job: Job) -> None: ...

    @app.task("jobs")
    async def second(job: Job) -> None: ...

    assert [h.key for h in app.handlers] == ["jobs", "jobs"]


def test_stream_groups_are_independent_so_types_may_differ(app: App) -> None:
    @app.stream("events", group="a")
    async def first(event: Job) -> None: ...

    @app.stream("events", group="b")
    async def second(event: Other) -> None: ...

    assert len(app.handlers) == 2


# what is refused at decoration time ---------------------------------------------------------------
def test_a_synchronous_function_is_refused(app: App) -> None:
    def sync(body: str) -> None: ...

    with pytest.raises(ConfigurationError, match="async def"):
        app.task("jobs")(sync)  # type: ignore[arg-type]
    assert app.handlers == []


def test_an_annotation_pydantic_cannot_build_is_refused(app: App) -> None:
    async def handler(body: NotBuildable) -> None: ...

    with pytest.raises(ConfigurationError, match=r"handler 'handler'.*NotBuildable"):
        app.task("jobs")(handler)
    assert app.handlers == []


def test_an_unresolvable_annotation_is_refused(app: App) -> None:
    async def handler(body: DoesNotExist) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(ConfigurationError, match="DoesNotExist"):
        app.stream("events")(handler)


def test_two_handlers_on_one_queue_with_different_types_are_refused(app: App) -> None:
    @app.task("jobs")
    async def first(job: Job) -> None: ...

    async def second(job: Other) -> None: ...

    with pytest.raises(ConfigurationError, match=r"'first' and 'second'.*'jobs'"):
        app.task("jobs")(second)
    assert [h.name for h in app.handlers] == ["first"]


def test_two_handlers_in_one_group_with_different_types_are_refused(app: App) -> None:
    @app.stream("events", group="g")
    async def first(event: Job) -> None: ...

    async def second(event: Other) -> None: ...

    with pytest.raises(ConfigurationError, match="different body types"):
        app.stream("events", group="g")(second)


def test_one_key_cannot_be_a_queue_and_a_stream(app: App) -> None:
    @app.task("events")
    async def job(body: str) -> None: ...

    async def entry(body: str) -> None: ...

    with pytest.raises(ConfigurationError, match="both a task queue"):
        app.stream("events", group="g")(entry)


def test_two_handlers_with_one_name_are_refused(app: App) -> None:
    @app.task("a")
    async def same(body: str) -> None: ...

    async def same2(body: str) -> None: ...

    same2.__name__ = "same"
    with pytest.raises(ConfigurationError, match="named 'same'"):
        app.task("b")(same2)


@pytest.mark.parametrize(
    ("signature", "match"),
    [
        ("()", "first parameter"),
        ("(*, body: str)", "first parameter"),
        ("(message: Message)", "not Message"),
        ("(body: str, extra: int)", "'extra' has no default"),
        ("(body: str, a: Message, b: Message)", "only one parameter"),
        ("(body: str, m: Message, /)", "cannot be positional-only"),
    ],
)
def test_bad_signatures_are_refused(app: App, signature: str, match: str) -> None:
    namespace: dict[str, Any] = {"Message": Message}
    exec(f"async def handler{signature}:\n    return None", namespace)
    with pytest.raises(ConfigurationError, match=match):
        app.task("jobs")(namespace["handler"])


TASK_OPTIONS = [
    {"concurrency": 0},
    {"concurrency": -3},
    {"concurrency": 1.5},
    {"concurrency": True},
    {"concurrency": "8"},
    {"max_attempts": 0},
    {"lease": -1},
    {"lease": 0},
    {"lease": math.nan},
    {"lease": math.inf},
    {"lease": "30"},
    {"backoff": 5},
    {"batch": 0},
]
STREAM_OPTIONS = [
    {"concurrency": 0},
    {"max_deliveries": 0},
    {"lease": -1},
    {"start": "middle"},
    {"start": "$"},
    {"group": ""},
    {"group": 5},
    {"maxlen": 0},
    {"maxlen": -10},
    {"lag_warning": 0},
    {"backoff": "exponential"},
]
SUBSCRIBE_CASES: list[tuple[tuple[str, ...], dict[str, Any]]] = [
    (("news",), {"concurrency": 0}),
    (("news",), {"buffer": 0}),
    (("news",), {"pattern": "n*"}),  # channels and a pattern
    ((), {"pattern": "n*", "sharded": True}),  # a sharded pattern
    ((), {}),  # nothing to subscribe to
    (("news",), {"sharded": "yes"}),
    (("",), {}),
    ((), {"pattern": ""}),
]


@pytest.mark.parametrize("options", TASK_OPTIONS, ids=repr)
def test_bad_task_options_are_refused(app: App, options: dict[str, Any]) -> None:
    async def handler(body: str) -> None: ...

    with pytest.raises(ConfigurationError, match="handler 'handler'"):
        app.task("jobs", **options)(handler)
    assert app.handlers == []


@pytest.mark.parametrize("options", STREAM_OPTIONS, ids=repr)
def test_bad_stream_options_are_refused(app: App, options: dict[str, Any]) -> None:
    async def handler(body: dict) -> None: ...

    with pytest.raises(ConfigurationError, match="handler 'handler'"):
        app.stream("events", **options)(handler)
    assert app.handlers == []


@pytest.mark.parametrize(("channels", "options"), SUBSCRIBE_CASES, ids=repr)
def test_bad_subscribe_options_are_refused(
    app: App, channels: tuple[str, ...], options: dict[str, Any]
) -> None:
    async def handler(body: str) -> None: ...

    with pytest.raises(ConfigurationError, match="handler 'handler'"):
        app.subscribe(*channels, **options)(handler)
    assert app.handlers == []


@pytest.mark.parametrize("name", ["", None, 7])
def test_bad_queue_and_stream_names_are_refused(app: App, name: Any) -> None:
    async def handler(body: str) -> None: ...

    with pytest.raises(ConfigurationError):
        app.task(name)(handler)
    with pytest.raises(ConfigurationError):
        app.stream(name)(handler)


@pytest.mark.parametrize(
    "options",
    [{"base": -1}, {"cap": -1}, {"factor": 0.5}, {"base": math.nan}, {"cap": math.inf}],
    ids=repr,
)
def test_bad_backoff_is_refused(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        Backoff(**options)


def test_backoff_grows_up_to_its_cap() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=10.0, jitter=False)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 10_000)] == [1, 2, 4, 8, 10, 10]
    jittered = Backoff(base=4.0, factor=2.0, cap=100.0)
    for _ in range(100):
        assert 4.0 <= jittered.delay(2) <= 8.0


async def test_handlers_cannot_be_added_to_a_running_app() -> None:
    app = App("memory://")

    @app.task("jobs")
    async def first(body: str) -> None: ...

    async with app:

        async def late(body: str) -> None: ...

        with pytest.raises(ConfigurationError, match="before the app starts"):
            app.task("other")(late)
    assert [h.name for h in app.handlers] == ["first"]


async def test_publish_shortcut_needs_exactly_one_channel(app: App) -> None:
    @app.subscribe("a", "b")
    async def two(body: str) -> None: ...

    @app.subscribe(pattern="p*")
    async def pattern(body: str) -> None: ...

    for handler in (two, pattern):
        with pytest.raises(ConfigurationError, match="exactly one channel"):
            await handler.publish("x")
    await app.aclose()


# a decorator without its parentheses --------------------------------------------------------------
@pytest.mark.parametrize(
    ("decorator", "what"), [("task", "queue"), ("stream", "stream"), ("subscribe", "channel")]
)
def test_a_bare_decorator_fails_at_import_with_one_clear_line(
    app: App, decorator: str, what: str
) -> None:
    async def send_email(body: str) -> None: ...

    with pytest.raises(ConfigurationError) as raised:
        getattr(app, decorator)(send_email)  # what `@app.task` without parentheses does
    message = str(raised.value)
    assert "\n" not in message
    assert f"@app.{decorator} needs the {what} name in parentheses" in message
    assert f'@app.{decorator}("send_email")' in message
    assert app.handlers == []


def test_an_unknown_handler_name_is_a_clear_error(app: App) -> None:
    @app.task("jobs")
    async def job(body: str) -> None: ...

    with pytest.raises(KeyError, match=r"no handler or key named 'nope' \(handlers: job\)"):
        app.handler("nope")
