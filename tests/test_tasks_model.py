"""A model of the reliable queue, checked against the real Lua scripts on the test server.

Hypothesis drives enqueue / fetch / settle (ack, retry, dead) / hand back / crash / recover /
time passing through ``QueueTransport``, and after every step the keys in Redis must match the
model exactly: every message is in exactly one of pending, processing, delayed, dead or done,
in the right order, with the right delivery count.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis.asyncio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from aioredq._codec import ENVELOPE_PREFIX, encode_envelope, new_id, parse_task_item
from aioredq._transports.queue import QueueTransport

T = TypeVar("T")
CASES = (
    "several due items promoted",
    "recovered a crashed consumer's work",
    "late ack",
    "late retry",
    "late dead",
    "late handback",
)
Q = "q"
LIVE = 3  # consumers alive at any time: a crashed one is replaced by a new one
LEASE_MS = 3_600_000  # live consumers never expire by themselves during a run
LATER_MS = 3_600_000  # a retry delay that never comes due unless time is advanced


def ident(raw: bytes) -> bytes:
    """What identifies a message wherever it is: the envelope id, or the foreign item."""
    item = parse_task_item(raw)
    return item.foreign if item.foreign is not None else item.id.encode()


def attempts_in(raw: bytes) -> int:
    return parse_task_item(raw).attempts if raw.startswith(ENVELOPE_PREFIX) else 0


class QueueMachine(RuleBasedStateMachine):
    url = ""
    seen: Counter[str] = Counter()  # how often the interesting cases came up, over all runs

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = redis.asyncio.Redis.from_url(self.url)
        self.run(self.client.flushdb())
        self.t: dict[str, QueueTransport] = {}
        self.processing: dict[str, list[bytes]] = {}
        self.alive: set[str] = set()
        for _ in range(LIVE):
            self._new_consumer()
        self.crashed: set[str] = set()  # expired, not yet recovered
        self.gone: dict[str, list[bytes]] = {}  # recovered; what each held when it crashed
        self.pending: list[bytes] = []  # the queue list, left to right (next taken: last)
        self.raws: dict[bytes, bytes] = {}  # message -> its item in a processing list
        self.delayed: dict[bytes, int] = {}  # message -> score
        self.dead: list[bytes] = []
        self.done: set[bytes] = set()
        self.attempts: dict[bytes, int] = {}
        self.made = 0
        self.fetches = 0
        self.clock = 0  # scores given to delayed items when time advances

    def _new_consumer(self) -> None:
        c = f"c{len(self.t) + 1}"
        self.t[c] = QueueTransport(self.client, Q, c)
        self.processing[c] = []
        self.alive.add(c)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    # producing ---------------------------------------------------------------------------
    @rule(
        kinds=st.lists(st.booleans(), min_size=1, max_size=4),
        payload=st.binary(max_size=6),
    )
    def enqueue(self, kinds: list[bool], payload: bytes) -> None:
        raws = []
        for foreign in kinds:
            self.made += 1
            if foreign:  # any bytes at all, as another program may push
                raws.append(b"f%d:" % self.made + payload)
            else:
                raws.append(encode_envelope(payload.hex(), msg_id=new_id()))
        self.run(self.t[min(self.alive)].push(raws))
        for raw in raws:
            msg = ident(raw)
            self.attempts[msg] = 0
            self.pending.insert(0, msg)  # LPUSH a b: b ends leftmost

    # consuming ---------------------------------------------------------------------------
    @rule(data=st.data(), count=st.integers(1, 4), later=st.integers(0, 3))
    def fetch(self, data: st.DataObject, count: int, later: int) -> None:
        """Time passes (the ``later`` items delayed first come due), then a consumer fetches."""
        waiting = [m for m, s in self.delayed.items() if s > self.clock]  # in delay order
        for m in waiting[:later]:
            self.clock += 1
            self.delayed[m] = self.clock
            self.run(
                self.client.zadd(
                    self.t[min(self.alive)].delayed, {self.raws[m]: self.clock}, xx=True
                )
            )
        c = data.draw(st.sampled_from(sorted(self.alive)))
        self.fetches += 1
        got = self.run(self.t[c].fetch(count, LEASE_MS, f"{c}:{self.fetches}:", count))
        due = sorted((s, m) for m, s in self.delayed.items() if s <= self.clock)[:count]
        if len(due) > 1:
            self.seen["several due items promoted"] += 1
        for _, msg in due:
            del self.delayed[msg]
        self.pending.extend(m for _, m in reversed(due))  # earliest due ends rightmost
        taken = [self.pending.pop() for _ in range(min(count, len(self.pending)))]
        assert [ident(r) for r in got.items] == taken
        for msg, raw in zip(taken, got.items, strict=True):
            self.attempts[msg] += 1
            assert attempts_in(raw) == self.attempts[msg]
            self.raws[msg] = raw
        self.processing[c] = taken[::-1] + self.processing[c]
        assert (got.next_due_ms is None) == (not self.delayed)

    def _pick_held(self, data: st.DataObject) -> tuple[str, list[bytes]]:
        c = data.draw(st.sampled_from(sorted(c for c in self.alive if self.processing[c])))
        picked = data.draw(st.lists(st.sampled_from(self.processing[c]), min_size=1, unique=True))
        return c, picked

    @precondition(lambda self: any(self.processing[c] for c in self.alive))
    @rule(data=st.data())
    def settle(self, data: st.DataObject) -> None:
        c, picked = self._pick_held(data)
        outcome = {m: data.draw(st.sampled_from(["ack", "retry", "dead"])) for m in picked}
        acks = [m for m in picked if outcome[m] == "ack"]
        retries = [m for m in picked if outcome[m] == "retry"]
        dead = [m for m in picked if outcome[m] == "dead"]
        moved = self.run(
            self.t[c].settle(
                [self.raws[m] for m in acks],
                [(self.raws[m], LATER_MS) for m in retries],
                [(self.raws[m], b"dead:" + m) for m in dead],
            )
        ).count
        assert moved == len(picked)
        for m in picked:
            self.processing[c].remove(m)
        self.done.update(acks)
        for m in retries:
            self.delayed[m] = 10**15  # not due until time advances
        for m in dead:
            self.dead.insert(0, m)

    @precondition(lambda self: any(self.processing[c] for c in self.alive))
    @rule(data=st.data())
    def retry_all(self, data: st.DataObject) -> None:
        """Everything a consumer holds fails at once (say, a database is down)."""
        c = data.draw(st.sampled_from(sorted(c for c in self.alive if self.processing[c])))
        held = self.processing[c][::-1]  # oldest first
        moved = self.run(self.t[c].settle([], [(self.raws[m], LATER_MS) for m in held], [])).count
        assert moved == len(held)
        self.processing[c] = []
        for m in held:
            self.delayed[m] = 10**15

    @precondition(lambda self: any(self.processing[c] for c in self.alive))
    @rule(data=st.data())
    def hand_back(self, data: st.DataObject) -> None:
        c, picked = self._pick_held(data)
        started = {m: data.draw(st.booleans()) for m in picked}
        pairs = []
        for m in picked:
            item = parse_task_item(self.raws[m])
            pairs.append((item.raw, item.raw if started[m] else item.undelivered()))
        assert self.run(self.t[c].handback(pairs)) == len(picked)
        for m in picked:
            self.processing[c].remove(m)
            if not started[m]:
                self.attempts[m] -= 1
        self.pending.extend(reversed(picked))  # the first given is taken first again

    @precondition(lambda self: any(self.processing[c] for c in self.alive))
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from(sorted(c for c in self.alive if self.processing[c])))
        self.alive.remove(c)
        self.crashed.add(c)
        self.run(self.client.zadd(self.t[c].consumers, {c: 0}))  # its lease ran out
        self._new_consumer()

    @precondition(lambda self: self.crashed)
    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from(sorted(self.alive)))
        self.run(self.t[c].heartbeat(LEASE_MS))
        moved = self.run(self.t[c].recover(f"token-{c}", 10_000))
        expected = 0
        for dead in sorted(self.crashed):
            self.gone[dead] = [self.raws[m] for m in self.processing[dead]]
            expected += len(self.processing[dead])
            self.pending.extend(self.processing[dead])  # oldest (rightmost) ends rightmost
            self.processing[dead] = []
        self.crashed.clear()
        assert moved == expected
        if moved:
            self.seen["recovered a crashed consumer's work"] += 1
        assert not self.run(self.client.exists(self.t[c].lock))

    @precondition(lambda self: any(self.gone.values()))
    @rule(data=st.data(), outcome=st.sampled_from(["ack", "retry", "dead", "handback"]))
    def late_settle(self, data: st.DataObject, outcome: str) -> None:
        """A consumer taken for dead comes back and settles what it held: nothing moves."""
        c = data.draw(st.sampled_from(sorted(c for c, held in self.gone.items() if held)))
        raw = data.draw(st.sampled_from(self.gone[c]))
        t = self.t[c]
        self.seen[f"late {outcome}"] += 1
        if outcome == "handback":
            assert self.run(t.handback([(raw, raw)])) == 0
            return
        acks = [raw] if outcome == "ack" else []
        retries = [(raw, 1)] if outcome == "retry" else []
        dead = [(raw, b"dead:late")] if outcome == "dead" else []
        assert self.run(t.settle(acks, retries, dead)).count == 0

    # what Redis must hold ----------------------------------------------------------------
    @invariant()
    def redis_matches_the_model(self) -> None:
        pending = self.run(self.client.lrange(Q, 0, -1))
        assert [ident(r) for r in pending] == self.pending
        for raw in pending:
            assert attempts_in(raw) == self.attempts[ident(raw)]
        held: list[bytes] = []
        for c in self.t:
            items = self.run(self.client.lrange(self.t[c].processing, 0, -1))
            assert [ident(r) for r in items] == self.processing[c]
            held += self.processing[c]
        delayed = self.run(self.client.zrange(self.t[min(self.alive)].delayed, 0, -1))
        assert sorted(ident(r) for r in delayed) == sorted(self.delayed)
        dead = self.run(self.client.lrange(self.t[min(self.alive)].dead, 0, -1))
        assert dead == [b"dead:" + m for m in self.dead]
        places = Counter([*self.pending, *held, *self.delayed, *self.dead, *self.done])
        assert set(places) == set(self.attempts)  # nothing lost
        assert all(n == 1 for n in places.values())  # nothing in two places
        registered = {
            n.decode()
            for n in self.run(self.client.zrange(self.t[min(self.alive)].consumers, 0, -1))
        }
        assert registered.isdisjoint(self.gone)


@pytest.mark.timeout(300)  # shrinking a failure can take a while; a pass takes seconds
def test_queue_scripts_keep_every_message_in_exactly_one_place(redis_url: str) -> None:
    QueueMachine.url = redis_url
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=80,
            stateful_step_count=50,
            deadline=None,
            database=None,
            derandomize=True,  # the same cases every run, so coverage is checked, not hoped for
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
    print(f"\nmodel cases: {dict(QueueMachine.seen)}")
    # The runs must reach the cases that matter, or the model proves little.
    assert min(QueueMachine.seen[k] for k in CASES) >= 3, QueueMachine.seen
