"""A model of the reliable queue, checked against the real Lua scripts on the test server.

Hypothesis drives enqueue (at priorities 0, 2 and 7, some with a dedup key) / fetch / settle
(ack, retry, dead) / hand back / crash / recover / time passing through ``QueueTransport``, and
after every step the keys in Redis must match the model exactly: every message is in exactly one
of pending (its priority's list), processing, delayed, dead or done, in the right order, with
the right delivery count. A dedup key ``{q}:key:<k>`` holds the id of its job while the job is
queued, delayed or held (another keyed push returns that id and adds nothing), and is freed when
the job is acked or dead-lettered: deleted, or left to expire after its ``key_ttl``.

It also breaks things the way an operator or another program does: any key of the queue (the
queue, ``{q}:delayed``, ``{q}:dead``, ``{q}:consumers``, a processing list) is replaced by a
key of the wrong type (its content kept aside) and later fixed, and Redis refuses writes
(``maxmemory``). A script that cannot write where an item goes must leave it where it was.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
import redis.asyncio
from _models import run_until_covered
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)
from redis.exceptions import ResponseError

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
    "refused by a wrong-typed key",
    "refused under maxmemory",
    "fixed a wrong-typed key",
    "due items kept while the queue was broken",
    "one fetch took from two priorities",
    "keyed push answered by a queued job",
    "keyed push answered by a delayed job",
    "keyed push answered by a held job",
    "keyed push answered by a key left to expire",
    "keyed push after its key was freed",
    "key freed by an ack",
    "key freed by a dead letter",
    "key left to expire",
    "late settle of a keyed job",
)
KINDS = ("queue", "delayed", "dead", "consumers", "processing")
Q = "q"
LIVE = 3  # consumers alive at any time: a crashed one is replaced by a new one
LEASE_MS = 3_600_000  # live consumers never expire by themselves during a run
LATER_MS = 3_600_000  # a retry delay that never comes due unless time is advanced
PRIORITIES = (7, 2)  # besides 0 (the queue list), highest first
DEDUP = ("a", "b", "c")  # few keys, so that pushes meet jobs holding them
KEY_TTL_MS = 3_600_000  # a freed key with a ttl lingers until time is advanced


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
        self.ranked: dict[int, list[bytes]] = {p: [] for p in PRIORITIES}  # {q}:priority:p
        self.priority: dict[bytes, int] = {}
        self.raws: dict[bytes, bytes] = {}  # message -> its item in a processing list
        self.delayed: dict[bytes, int] = {}  # message -> score
        self.dead: list[bytes] = []
        self.done: set[bytes] = set()
        self.attempts: dict[bytes, int] = {}
        self.made = 0
        self.fetches = 0
        self.clock = 0  # scores given to delayed items when time advances
        self.broken: dict[str, str] = {}  # kind -> key now of the wrong type
        self.holder: dict[str, bytes] = {}  # dedup key -> the message holding it
        self.dedup: dict[bytes, tuple[str, int]] = {}  # message -> (its dedup key, ttl ms)
        self.lingering: dict[str, bytes] = {}  # freed with a ttl: key -> the id it still holds
        self.used: set[str] = set()  # dedup keys ever written

    def key(self, name: str) -> str:
        """Where the content of ``name`` is now (kept aside while the key is broken)."""
        return f"aside:{name}" if name in self.broken.values() else name

    def bad(self, *names: str) -> bool:
        return any(n in self.broken.values() for n in names)

    def refused(self, coro: Coroutine[Any, Any, Any]) -> None:
        with pytest.raises(ResponseError, match="WRONGTYPE"):
            self.run(coro)
        self.seen["refused by a wrong-typed key"] += 1

    def _new_consumer(self) -> None:
        c = f"c{len(self.t) + 1}"
        self.t[c] = QueueTransport(self.client, Q, c)
        self.processing[c] = []
        self.alive.add(c)

    def waiting(self, msg: bytes) -> list[bytes]:
        """The list ``msg`` waits in: its priority's (the queue list for 0)."""
        p = self.priority[msg]
        return self.ranked[p] if p else self.pending

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    # producing ---------------------------------------------------------------------------
    @rule(
        kinds=st.lists(st.booleans(), min_size=1, max_size=4),
        payload=st.binary(max_size=6),
        priority=st.sampled_from([0, 0, *PRIORITIES]),
        keyed=st.none()
        | st.tuples(
            st.sampled_from(DEDUP),
            st.sampled_from([0, KEY_TTL_MS]),
            st.sampled_from([False, False, True]),
        ),
    )
    def enqueue(
        self,
        kinds: list[bool],
        payload: bytes,
        priority: int,
        keyed: tuple[str, int, bool] | None,
    ) -> None:
        if keyed is not None:
            self.enqueue_keyed(*keyed, payload, priority)
            return
        raws = []
        for foreign in kinds:
            self.made += 1
            if foreign and not priority:  # any bytes at all, as another program may push
                raws.append(b"f%d:" % self.made + payload)
            else:
                raws.append(encode_envelope(payload.hex(), msg_id=new_id(), priority=priority))
        if self.bad(Q) and not priority:
            self.refused(self.t[min(self.alive)].push(raws))
            return
        self.run(self.t[min(self.alive)].push(raws, priority))
        for raw in raws:
            msg = ident(raw)
            self.attempts[msg] = 0
            self.priority[msg] = priority
            self.waiting(msg).insert(0, msg)  # LPUSH a b: b ends leftmost

    def enqueue_keyed(
        self, key: str, ttl: int, delayed: bool, payload: bytes, priority: int
    ) -> None:
        """``enqueue(..., key=, key_ttl=)``: written with its key in one script, unless a job
        holds the key."""
        t = self.t[min(self.alive)]
        self.made += 1
        msg_id = new_id()
        raw = encode_envelope(payload.hex(), msg_id=msg_id, priority=priority, dedup=(key, ttl))
        push = t.push_keyed(
            raw, msg_id, key, priority=priority, delay_ms=LATER_MS if delayed else None
        )
        if self.bad(t.delayed if delayed else Q if not priority else ""):
            self.refused(push)
            return
        got = self.run(push)
        if key in self.holder:
            held = self.holder[key]
            assert got == held.decode()
            where = (
                "delayed"
                if held in self.delayed
                else "held"
                if any(held in self.processing[c] for c in self.t)
                else "queued"
            )
            self.seen[f"keyed push answered by a {where} job"] += 1
            return
        if key in self.lingering:
            assert got == self.lingering[key].decode()
            self.seen["keyed push answered by a key left to expire"] += 1
            return
        assert got == msg_id
        if key in self.used:
            self.seen["keyed push after its key was freed"] += 1
        self.used.add(key)
        msg = msg_id.encode()
        self.attempts[msg] = 0
        self.priority[msg] = priority
        self.holder[key] = msg
        self.dedup[msg] = (key, ttl)
        if delayed:
            self.raws[msg] = raw
            self.delayed[msg] = 10**15
        else:
            self.waiting(msg).insert(0, msg)

    def key_ttl_passes(self, key: str) -> None:
        """A freed key's ``key_ttl`` runs out (brought forward to 1 ms)."""
        name = f"{{{Q}}}:key:{key}"
        self.run(self.client.pexpire(name, 1))
        while self.run(self.client.exists(name)):  # expired keys go on the next access
            self.run(asyncio.sleep(0.001))
        del self.lingering[key]

    # consuming ---------------------------------------------------------------------------
    @rule(data=st.data(), count=st.integers(1, 4), later=st.integers(0, 3))
    def fetch(self, data: st.DataObject, count: int, later: int) -> None:
        """Time passes (the ``later`` items delayed first come due; at 3, a freed dedup key
        expires too), then a consumer fetches."""
        for key in sorted(self.lingering)[: 1 if later == 3 else 0]:
            self.key_ttl_passes(key)
        t = self.t[min(self.alive)]
        waiting = [m for m, s in self.delayed.items() if s > self.clock]  # in delay order
        for m in waiting[:later] if not self.bad(t.delayed) else []:
            self.clock += 1
            self.delayed[m] = self.clock
            self.run(
                self.client.zadd(
                    self.t[min(self.alive)].delayed, {self.raws[m]: self.clock}, xx=True
                )
            )
        c = data.draw(st.sampled_from(sorted(self.alive)))
        self.fetches += 1
        fetch = self.t[c].fetch(count, LEASE_MS, f"{c}:{self.fetches}:", count)
        if self.bad(Q, self.t[c].processing, t.consumers):
            if self.bad(Q) and any(s <= self.clock for s in self.delayed.values()):
                self.seen["due items kept while the queue was broken"] += 1
            self.refused(fetch)
            return
        got = self.run(fetch)
        due = sorted((s, m) for m, s in self.delayed.items() if s <= self.clock)[:count]
        if self.bad(t.delayed):  # nothing is promoted, the queue is still taken
            assert got.problem is not None and t.delayed in got.problem
            due = []
        if len(due) > 1:
            self.seen["several due items promoted"] += 1
        for _, msg in due:
            del self.delayed[msg]
        for _, msg in reversed(due):  # earliest due ends rightmost in its list
            self.waiting(msg).append(msg)
        taken = []
        for waiting in (*(self.ranked[p] for p in PRIORITIES), self.pending):  # highest first
            while waiting and len(taken) < count:
                taken.append(waiting.pop())
        if any(self.priority[m] for m in taken) and any(not self.priority[m] for m in taken):
            self.seen["one fetch took from two priorities"] += 1
        assert [ident(r) for r in got.items] == taken
        for msg, raw in zip(taken, got.items, strict=True):
            self.attempts[msg] += 1
            assert attempts_in(raw) == self.attempts[msg]
            self.raws[msg] = raw
        self.processing[c] = taken[::-1] + self.processing[c]
        assert (got.next_due_ms is None) == (not self.delayed or self.bad(t.delayed))

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
        settle = self.t[c].settle(
            [self.raws[m] for m in acks],
            [(self.raws[m], LATER_MS) for m in retries],
            [(self.raws[m], b"dead:" + m) for m in dead],
        )
        if self.bad(self.t[c].processing):
            self.refused(settle)
            return
        done = self.run(settle)
        # A wrong-typed destination refuses its whole kind; everything else is written.
        if self.bad(self.t[c].delayed) and retries:
            assert done.retries_refused == 0 and "WRONGTYPE" in (done.retry_error or "")
            retries = []
        if self.bad(self.t[c].dead) and dead:
            assert done.dead_refused == 0 and "WRONGTYPE" in (done.dead_error or "")
            dead = []
        self._settled(c, acks, retries, dead)
        assert done.count == len(acks) + len(retries) + len(dead)

    def _settled(self, c: str, acks: list[bytes], retries: list[bytes], dead: list[bytes]) -> None:
        for m in [*acks, *retries, *dead]:
            self.processing[c].remove(m)
        self.done.update(acks)
        for m in [*acks, *dead]:  # a finished job frees its dedup key
            if m in self.dedup:
                key, ttl = self.dedup.pop(m)
                del self.holder[key]
                self.seen["key freed by an ack" if m in acks else "key freed by a dead letter"] += 1
                if ttl:
                    self.lingering[key] = m
                    self.seen["key left to expire"] += 1
        for m in retries:
            self.delayed[m] = 10**15  # not due until time advances
        for m in dead:
            self.dead.insert(0, m)

    @precondition(lambda self: any(self.processing[c] for c in self.alive))
    @rule(data=st.data())
    def settle_under_maxmemory(self, data: st.DataObject) -> None:
        """Redis refuses writes (``maxmemory`` with noeviction): removing works, adding may
        not. Whatever the script reports as refused must still be held, nothing lost."""
        c, picked = self._pick_held(data)
        if self.bad(self.t[c].processing):
            return
        outcome = {m: data.draw(st.sampled_from(["ack", "retry", "dead"])) for m in picked}
        acks = [m for m in picked if outcome[m] == "ack"]
        retries = [m for m in picked if outcome[m] == "retry"]
        dead = [m for m in picked if outcome[m] == "dead"]
        self.run(self.client.config_set("maxmemory", 1))
        try:
            done = self.run(
                self.t[c].settle(
                    [self.raws[m] for m in acks],
                    [(self.raws[m], LATER_MS) for m in retries],
                    [(self.raws[m], b"dead:" + m) for m in dead],
                )
            )
        finally:
            self.run(self.client.config_set("maxmemory", 0))
        if done.retries_refused is not None or done.dead_refused is not None:
            self.seen["refused under maxmemory"] += 1
        if done.retries_refused is not None:
            retries = retries[: done.retries_refused]
        if done.dead_refused is not None:
            dead = dead[: done.dead_refused]
        self._settled(c, acks, retries, dead)
        assert done.count == len(acks) + len(retries) + len(dead)

    @precondition(lambda self: any(self.processing[c] for c in self.alive))
    @rule(data=st.data())
    def retry_all(self, data: st.DataObject) -> None:
        """Everything a consumer holds fails at once (say, a database is down)."""
        c = data.draw(st.sampled_from(sorted(c for c in self.alive if self.processing[c])))
        held = self.processing[c][::-1]  # oldest first
        settle = self.t[c].settle([], [(self.raws[m], LATER_MS) for m in held], [])
        if self.bad(self.t[c].processing):
            self.refused(settle)
            return
        moved = self.run(settle).count
        if self.bad(self.t[c].delayed):
            assert moved == 0
            return
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
        if self.bad(Q, self.t[c].processing):
            self.refused(self.t[c].handback(pairs))
            return
        assert self.run(self.t[c].handback(pairs)) == len(picked)
        for m in picked:
            self.processing[c].remove(m)
            if not started[m]:
                self.attempts[m] -= 1
        for m in reversed(picked):  # the first given is taken first again, in its own list
            self.waiting(m).append(m)

    @precondition(
        lambda self: (
            "consumers" not in self.broken
            and any(self.processing[c] and not self.bad(self.t[c].processing) for c in self.alive)
        )
    )
    @rule(data=st.data())
    def crash(self, data: st.DataObject) -> None:
        choices = [
            c for c in self.alive if self.processing[c] and not self.bad(self.t[c].processing)
        ]
        c = data.draw(st.sampled_from(sorted(choices)))
        self.alive.remove(c)
        self.crashed.add(c)
        self.run(self.client.zadd(self.t[c].consumers, {c: 0}))  # its lease ran out
        self._new_consumer()

    @precondition(lambda self: self.crashed)
    @rule(data=st.data())
    def recover(self, data: st.DataObject) -> None:
        c = data.draw(st.sampled_from(sorted(self.alive)))
        if self.bad(self.t[c].consumers):
            self.refused(self.t[c].heartbeat(LEASE_MS))
            return
        self.run(self.t[c].heartbeat(LEASE_MS))
        if self.bad(Q):
            self.refused(self.t[c].recover(f"token-{c}", 10_000))
            assert not self.run(self.client.exists(self.t[c].lock))
            return
        moved = self.run(self.t[c].recover(f"token-{c}", 10_000))
        expected = 0
        for dead in sorted(self.crashed):
            self.gone[dead] = [self.raws[m] for m in self.processing[dead]]
            expected += len(self.processing[dead])
            for m in self.processing[dead]:  # oldest (rightmost) ends rightmost, in its list
                self.waiting(m).append(m)
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
        if ident(raw) in self.dedup:
            self.seen["late settle of a keyed job"] += 1
        if outcome == "handback":
            if self.bad(Q):
                self.refused(t.handback([(raw, raw)]))
                return
            assert self.run(t.handback([(raw, raw)])) == 0
            return
        acks = [raw] if outcome == "ack" else []
        retries = [(raw, 1)] if outcome == "retry" else []
        dead = [(raw, b"dead:late")] if outcome == "dead" else []
        assert self.run(t.settle(acks, retries, dead)).count == 0

    # breaking keys -----------------------------------------------------------------------
    @precondition(lambda self: len(self.broken) < 2)
    @rule(data=st.data(), kind=st.sampled_from(KINDS))
    def break_key(self, data: st.DataObject, kind: str) -> None:
        """Another program puts a key of the wrong type where one of the queue's keys was."""
        if kind in self.broken:
            return
        t = self.t[min(self.alive)]
        if kind == "processing":
            name = self.t[data.draw(st.sampled_from(sorted(self.alive)))].processing
        else:
            name = {"queue": Q, "delayed": t.delayed, "dead": t.dead, "consumers": t.consumers}[
                kind
            ]
        if self.run(self.client.exists(name)):
            self.run(self.client.rename(name, f"aside:{name}"))
        self.run(self.client.set(name, "wrong"))
        self.broken[kind] = name

    @precondition(lambda self: self.broken)
    @rule(data=st.data())
    def fix_key(self, data: st.DataObject) -> None:
        kind = data.draw(st.sampled_from(sorted(self.broken)))
        name = self.broken.pop(kind)
        self.run(self.client.delete(name))
        if self.run(self.client.exists(f"aside:{name}")):
            self.run(self.client.rename(f"aside:{name}", name))
        self.seen["fixed a wrong-typed key"] += 1

    # what Redis must hold ----------------------------------------------------------------
    @invariant()
    def redis_matches_the_model(self) -> None:
        pending = self.run(self.client.lrange(self.key(Q), 0, -1))
        assert [ident(r) for r in pending] == self.pending
        for raw in pending:
            assert attempts_in(raw) == self.attempts[ident(raw)]
        for p in PRIORITIES:
            ranked = self.run(self.client.lrange(f"{{{Q}}}:priority:{p}", 0, -1))
            assert [ident(r) for r in ranked] == self.ranked[p]
            for raw in ranked:
                assert attempts_in(raw) == self.attempts[ident(raw)]
        held: list[bytes] = []
        for c in self.t:
            items = self.run(self.client.lrange(self.key(self.t[c].processing), 0, -1))
            assert [ident(r) for r in items] == self.processing[c]
            held += self.processing[c]
        t = self.t[min(self.alive)]
        delayed = self.run(self.client.zrange(self.key(t.delayed), 0, -1))
        assert sorted(ident(r) for r in delayed) == sorted(self.delayed)
        dead = self.run(self.client.lrange(self.key(t.dead), 0, -1))
        assert dead == [b"dead:" + m for m in self.dead]
        ranked_all = [m for p in PRIORITIES for m in self.ranked[p]]
        places = Counter([*self.pending, *ranked_all, *held, *self.delayed, *self.dead, *self.done])
        assert set(places) == set(self.attempts)  # nothing lost
        assert all(n == 1 for n in places.values())  # nothing in two places
        reads = self.client.pipeline(transaction=False)
        for key in DEDUP:
            reads.get(f"{{{Q}}}:key:{key}").pttl(f"{{{Q}}}:key:{key}")
        found = self.run(reads.execute())
        for n, key in enumerate(DEDUP):
            held, ttl = found[2 * n], found[2 * n + 1]
            if key in self.holder:  # held for as long as its job is not finished
                assert (held, ttl) == (self.holder[key], -1), key
                assert self.holder[key] not in (*self.done, *self.dead)
            elif key in self.lingering:
                assert held == self.lingering[key] and 0 < ttl <= KEY_TTL_MS, (key, ttl)
            else:
                assert held is None, (key, held)
        registered = {
            n.decode() for n in self.run(self.client.zrange(self.key(t.consumers), 0, -1))
        }
        assert registered.isdisjoint(self.gone)


@pytest.mark.timeout(300)  # shrinking a failure can take a while; a pass takes seconds
def test_queue_scripts_keep_every_message_in_exactly_one_place(redis_url: str) -> None:
    QueueMachine.url = redis_url
    run_until_covered(QueueMachine, CASES, max_examples=150)
    print(f"\nmodel cases: {dict(QueueMachine.seen)}")
    assert min(QueueMachine.seen[k] for k in CASES) >= 1, QueueMachine.seen
