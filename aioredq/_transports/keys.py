"""Key layout (part of the public contract, see the README).

Every auxiliary key of a queue or stream shares the main key's cluster hash slot: for a name
without a hash tag the name itself becomes the tag (``{jobs}:dead``); a name that already has
one keeps it (``{tenant}jobs:dead``).
"""

from __future__ import annotations


def has_hash_tag(name: str) -> bool:
    start = name.find("{")
    if start < 0:
        return False
    end = name.find("}", start + 1)
    return end > start + 1


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def aux(name: str, suffix: str) -> str:
    """The auxiliary key ``suffix`` of queue or stream ``name``."""
    if has_hash_tag(name):
        return f"{name}:{suffix}"
    return f"{{{name}}}:{suffix}"


def processing(queue: str, consumer: str) -> str:
    return aux(queue, f"processing:{consumer}")


def delayed(queue: str) -> str:
    return aux(queue, "delayed")


def dead(name: str) -> str:
    return aux(name, "dead")


def consumers(name: str, group: str | None = None) -> str:
    """ZSET of live consumers: member = consumer name, score = lease expiry (ms, server time)."""
    return aux(name, "consumers" if group is None else f"consumers:{group}")


def recover_lock(name: str, group: str | None = None) -> str:
    return aux(name, "recovering" if group is None else f"recovering:{group}")


def paused(name: str, group: str | None = None) -> str:
    """While this key exists (any value), no worker starts messages of queue ``name`` (or of
    stream ``name``'s ``group``; without one, of its tail handlers)."""
    return aux(name, "paused" if group is None else f"paused:{group}")


def priority(queue: str, level: int) -> str:
    """The list of waiting jobs of priority ``level`` (1 to 9); 0 is the queue itself."""
    return aux(queue, f"priority:{level}")


def dedup(queue: str, key: str) -> str:
    """Holds the id of the job enqueued on ``queue`` with dedup ``key`` until it finishes."""
    return aux(queue, f"key:{key}")


def result(queue: str, job_id: str) -> str:
    """String: the outcome of job ``job_id`` (JSON), kept ``result_ttl`` seconds."""
    return aux(queue, f"result:{job_id}")


def finished(queue: str) -> str:
    """Stream of result keys as they are written (capped): what result waiters read."""
    return aux(queue, "finished")


def cancelled(queue: str) -> str:
    """ZSET of cancelled job ids: score = when the entry may be forgotten (ms, server time)."""
    return aux(queue, "cancelled")
