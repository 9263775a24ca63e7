"""One process serves HTTP and consumes: endpoints produce, handlers consume.

AIOREDQ_URL=redis://localhost:6379/0 uvicorn examples.fastapi_app:api
curl -X POST localhost:8000/jobs -H 'content-type: application/json' -d '{"to": "a@b.c"}'
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from aioredq import App, Message

logging.basicConfig(level=logging.INFO)
app = App()  # $AIOREDQ_URL, else redis://localhost:6379/0


class EmailJob(BaseModel):
    to: str


class Notification(BaseModel):
    type: str
    user: int


@app.task("jobs")
async def send_email(job: EmailJob, message: Message) -> None:
    logging.info("sending email to %s (attempt %d)", job.to, message.attempt)


@app.stream("notifications", group="senders")
async def notify(event: Notification) -> None:
    logging.info("notifying user %d by %s", event.user, event.type)


@app.subscribe("notice")
async def notice(text: str) -> None:
    logging.info("notice: %s", text)


api = FastAPI(lifespan=app.lifespan)


@api.post("/jobs")
async def post_job(job: EmailJob) -> dict[str, str]:
    return {"id": await send_email.enqueue(job)}


@api.post("/notifications")
async def post_notification(event: Notification) -> dict[str, str]:
    return {"id": await notify.append(event)}


@api.post("/notices")
async def post_notice(text: str) -> dict[str, int]:
    return {"receivers": await notice.publish(text)}


@api.get("/stats")
async def stats() -> dict[str, Any]:
    return {
        name: {"received": s.received, "succeeded": s.succeeded}
        for name, s in app.stats().handlers.items()
    }
