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


def result(queue: str, job_id: str) -> str:
    """String: the outcome of job ``job_id`` (JSON), kept ``result_ttl`` seconds."""
    return aux(queue, f"result:{job_id}")


def finished(queue: str) -> str:
    """Stream of result keys as they are written (capped): what result waiters read."""
    return aux(queue, "finished")


def cancelled(queue: str) -> str:
    """ZSET of cancelled job ids: score = when the entry may be forgotten (ms, server time)."""
    return aux(queue, "cancelled")
