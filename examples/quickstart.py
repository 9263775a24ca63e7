"""aioredq in one file: the three models on one App.

Runs on the embedded ``memory://`` backend by default (no Redis server needed); point it at a
real server with ``AIOREDQ_URL=redis://localhost:6379/0 python examples/quickstart.py``.
"""

from __future__ import annotations

import asyncio
import os

from pydantic import BaseModel

from aioredq import App, Message

app = App(os.environ.get("AIOREDQ_URL", "memory://"))


class EmailJob(BaseModel):
    to: str
    subject: str = "hello"


class Notification(BaseModel):
    type: str
    user: int


done = asyncio.Event()
seen: list[str] = []


def _record(line: str) -> None:
    print(line, flush=True)
    seen.append(line)
    if len(seen) == 6:
        done.set()


@app.subscribe("notice")
async def notice(text: str) -> None:
    _record(f"subscribe  notice       <- {text!r}")


@app.task("jobs", concurrency=4)
async def send_email(job: EmailJob, message: Message) -> None:
    _record(f"task       jobs         <- {job!r} (attempt {message.attempt})")


@app.stream("notifications", group="senders")
async def notify(event: Notification, message: Message) -> None:
    _record(f"stream     notification <- {event!r} (entry {message.id})")


async def main() -> None:
    async with app:  # connects and starts every consumer; leaving stops them gracefully
        await app.publish("notice", "deploying at 10:00")
        await send_email.enqueue(EmailJob(to="a@example.com"))
        await app.enqueue("jobs", {"to": "b@example.com", "subject": "welcome"})
        await notify.append(Notification(type="email", user=42))
        await app.append("notifications", {"type": "sms", "user": 7})
        await notice.publish("deployed")
        await asyncio.wait_for(done.wait(), timeout=10)
    print("stats:", {name: s.succeeded for name, s in app.stats().handlers.items()})


if __name__ == "__main__":
    asyncio.run(main())
