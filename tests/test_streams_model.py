"""A model of the consumer-group scripts, checked against the real Lua on the test server.

Hypothesis drives appends, reads, claiming own entries again, touching, releasing, claiming
idle entries of others, acks and dead letters (also into a dead-letter key of the wrong type),
consumers going silent and entries deleted from the stream, through ``StreamTransport``. A
silent consumer's entries are made idle past the lease the way time would (XCLAIM IDLE), so
the run needs no clock. After every step the group's PEL must match the model exactly:

- no entry leaves the PEL without an ack or a dead letter (or, once deleted from the stream,
  without being reported as deleted by a claim);
- delivery counts only grow;
- a live consumer's entries are never taken by others, and a consumer never claims its own;
- released entries are claimable by others at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest
import redis.asyncio
from _models import run_until_covered
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    rule,
)
from redis.exceptions import ResponseError

from aioredq._transports import stream as _stream
from aioredq._transports.stream import DeadLetter


class StreamTransport(_stream.StreamTransport):
    """The transport under the names the machine below calls its rules by. Hypothesis seeds
    a derandomized run from the machine's source, so the machine keeps its text (and the
    cases it reaches) while the transport's methods are named after their model effects."""

    claim_own = _stream.StreamTransport.retry
    release = _stream.StreamTransport.handback
    autoclaim = _stream.StreamTransport.recover


T = TypeVar("T")
S = "s"
G = "g"
LIVE = 3
LEASE_MS = 600_000  # nothing a live consumer holds gets this idle during a run
CASES = (
    "claimed a silent consumer's entry",
    "claimed a released entry",
    "left own idle entry alone",
    "claim reported a deleted entry",
    "dead letter refused",
    "cursor walked in steps",
)


@dataclass
class Held:
    owner: str
    deliveries: int
    idle: bool = False  # idle past the lease: released, or its owner went silent


class StreamMachine(RuleBasedStateMachine):
    url = ""
    seen: Counter[str] = Counter()

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.client = redis.asyncio.Redis.from_url(self.url)
        self.run(self.client.flushdb())
        self.run(self.client.xgroup_create(S, G, "$", mkstream=True))
        self.t: dict[str, StreamTransport] = {}
        self.alive: list[str] = []
        for _ in range(LIVE):
            self._new_consumer()
        self.new: list[str] = []  # appended, not yet delivered (in order)
        self.pel: dict[str, Held] = {}
        self.deleted: set[str] = set()
        self.acked: set[str] = set()
        self.dead: list[str] = []
        self.dropped: set[str] = set()  # deleted, and reported so by a claim
        self.most: dict[str, int] = {}  # highest delivery count seen per entry
        self.dead_broken = False

    def _new_consumer(self) -> None:
        c = f"c{len(self.t) + 1}"
        self.t[c] = StreamTransport(self.client, S, G, c)
        self.alive.append(c)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.client.aclose())
        self.loop.close()

    def _drop_if_deleted(self, entry_id: str) -> None:
        """Any XCLAIM (JUSTID too) of an entry deleted from the stream drops it from the PEL
        in Redis 7: touch and release do so as well."""
        if entry_id in self.deleted:
            del self.pel[entry_id]
            self.dropped.add(entry_id)

    def _holder(self, data: st.DataObject) -> str:
        """A live consumer, most often one that holds entries."""
        owners = sorted({h.owner for h in self.pel.values()} & set(self.alive))
        if not owners:
            return data.draw(st.sampled_from(self.alive))
        return data.draw(st.sampled_from(owners) | st.sampled_from(self.alive))

    def _mine(self, c: str) -> list[str]:
        return sorted((i for i, h in self.pel.items() if h.owner == c), key=_key)

    # producing and deleting ----------------------------------------------------------------
    @rule(n=st.integers(1, 4))
    def append(self, n: int) -> None:
        for k in range(n):
            self.new.append(self.run(self.client.xadd(S, {"n": str(k)})).decode())

    @rule(data=st.data())
    def delete(self, data: st.DataObject) -> None:
        held = data.draw(st.booleans())  # often an entry already delivered
        known = [i for i in [*([] if held else self.new), *self.pel] if i not in self.deleted]
        if not known:
            return
        victim = data.draw(st.sampled_from(sorted(known, key=_key)))
        self.run(self.client.xdel(S, victim))
        self.deleted.add(victim)
        if victim in self.new:
            self.new.remove(victim)  # a read skips it: it never reaches the PEL

    # consuming -----------------------------------------------------------------------------
    @rule(data=st.data(), count=st.integers(1, 6))
    def read(self, data: st.DataObject, count: int) -> None:
        c = data.draw(st.sampled_from(self.alive))
        got = self.run(self.t[c].read_group(count, None))
        expected, self.new = self.new[:count], self.new[count:]
        assert [e.id for e in got] == expected
        for e in got:
            self.pel[e.id] = Held(c, 1)

    @rule(data=st.data())
    def claim_own(self, data: st.DataObject) -> None:
        c = self._holder(data)
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.pel, key=_key) or ["0-1"]), unique=True)
        )
        got = self.run(self.t[c].claim_own(ids))
        expected = []
        for i in dict.fromkeys(ids):
            held = self.pel.get(i)
            if held is None or held.owner != c:
                continue
            if i in self.deleted:  # Redis 7 drops it from the PEL
                del self.pel[i]
                self.dropped.add(i)
                continue
            held.deliveries += 1
            held.idle = False
            expected.append((i, held.deliveries))
        assert [(e.id, e.deliveries) for e in got] == expected

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        c = self._holder(data)
        ids = data.draw(
            st.lists(st.sampled_from(sorted(self.pel, key=_key) or ["0-1"]), unique=True)
        )
        lost = self.run(self.t[c].touch(ids))
        expected = []
        for i in ids:
            held = self.pel.get(i)
            if held is not None and held.owner == c:
                held.idle = False
                self._drop_if_deleted(i)
            else:
                expected.append(i)
        assert lost == expected

    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        c = self._holder(data)
        mine = self._mine(c)
        if not mine:
            return
        ids = data.draw(st.lists(st.sampled_from(mine), unique=True, min_size=1))
        n = self.run(self.t[c].release([(i, self.pel[i].deliveries) for i in ids]))
        assert n == len(ids)
        for i in ids:
            self.pel[i].idle = True
            self._drop_if_deleted(i)
        if data.draw(st.booleans()):  # claimed at once: by others, never by c itself
            by = data.draw(st.sampled_from(self.alive))
            self._autoclaim(data, data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)), by)

    @rule(data=st.data(), count=st.integers(1, 3), scan=st.integers(1, 4))
    def autoclaim(self, data: st.DataObject, count: int, scan: int) -> None:
        self._autoclaim(data, count, scan)

    def _autoclaim(self, data: st.DataObject, count: int, scan: int, by: str | None = None) -> None:
        idle = sorted((i for i, h in self.pel.items() if h.idle), key=_key)
        # Often the owner of an idle entry itself: it must leave its own entries alone.
        owners = sorted({self.pel[i].owner for i in idle} & set(self.alive))
        by_owner = owners and data.draw(st.booleans())
        c = by or data.draw(st.sampled_from(owners if by_owner else self.alive))
        expect_claimed = [i for i in idle if self.pel[i].owner != c and i not in self.deleted]
        expect_deleted = [i for i in idle if self.pel[i].owner != c and i in self.deleted]
        expect_own = [i for i in idle if self.pel[i].owner == c]
        silent = {i for i in expect_claimed if self.pel[i].owner not in self.alive}
        claimed, deleted, own = [], [], []
        cursor, steps = "0-0", 0
        while True:
            cursor, entries, gone, mine = self.run(
                self.t[c].autoclaim(LEASE_MS, cursor, count, scan)
            )
            steps += 1
            assert len(entries) <= count
            claimed += [(e.id, e.deliveries) for e in entries]
            deleted += gone
            own += mine
            if cursor == "0-0":
                break
        assert [i for i, _ in claimed] == expect_claimed
        assert deleted == expect_deleted
        assert own == expect_own
        for i, n in claimed:
            assert n == self.pel[i].deliveries + 1
            self.pel[i] = Held(c, n)
        for i in deleted:
            del self.pel[i]
            self.dropped.add(i)
        if silent:
            self.seen["claimed a silent consumer's entry"] += 1
        if set(expect_claimed) - silent:
            self.seen["claimed a released entry"] += 1
        if own:
            self.seen["left own idle entry alone"] += 1
        if deleted:
            self.seen["claim reported a deleted entry"] += 1
        if steps > 1 and claimed:
            self.seen["cursor walked in steps"] += 1

    # settling ------------------------------------------------------------------------------
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        c = self._holder(data)
        mine = self._mine(c)
        if not mine:
            return
        ids = data.draw(st.lists(st.sampled_from(mine), unique=True, min_size=1))
        self.run(self.t[c].ack(ids))
        for i in ids:
            del self.pel[i]
            self.acked.add(i)

    @rule(data=st.data())
    def dead_letter(self, data: st.DataObject) -> None:
        owners = sorted({h.owner for h in self.pel.values()} & set(self.alive))
        c = data.draw(st.sampled_from(owners or self.alive))
        # Mostly an entry of its own; sometimes another's (refused: not ours).
        candidates = self._mine(c) or sorted(self.pel, key=_key) or ["0-1"]
        i = data.draw(
            st.sampled_from(candidates) | st.sampled_from(sorted(self.pel, key=_key) or ["0-1"])
        )
        held = self.pel.get(i)
        letter = DeadLetter(i, "Reject: no", held.deliveries if held else 1, "now", "{}", 0)
        ours = held is not None and held.owner == c
        if self.dead_broken and ours:
            with pytest.raises(ResponseError, match="WRONGTYPE"):
                self.run(self.t[c].dead_letter(letter))
            self.seen["dead letter refused"] += 1
            return  # still pending and ours: nothing was written, nothing acked
        self.run(self.t[c].dead_letter(letter))
        if ours:
            del self.pel[i]
            self.dead.append(i)

    @rule()
    def break_or_fix_dead_key(self) -> None:
        """A dead-letter key of the wrong type (its letters kept aside), or fixed again."""
        dead = self.t[self.alive[0]].dead
        if self.dead_broken:
            self.run(self.client.delete(dead))
            if self.run(self.client.exists("saved")):
                self.run(self.client.rename("saved", dead))
        else:
            if self.run(self.client.exists(dead)):
                self.run(self.client.rename(dead, "saved"))
            self.run(self.client.set(dead, "not a stream"))
        self.dead_broken = not self.dead_broken

    # consumers going silent ----------------------------------------------------------------
    @rule(data=st.data())
    def go_silent(self, data: st.DataObject) -> None:
        """A consumer stops renewing (crash, pause): its entries become idle past the lease,
        as time would make them, with their delivery counts; a new consumer takes its place."""
        c = self._holder(data)
        mine = self._mine(c)
        self.run(self.t[c].release([(i, self.pel[i].deliveries) for i in mine]))
        for i in mine:
            self.pel[i].idle = True
            self._drop_if_deleted(i)
        self.alive.remove(c)
        self._new_consumer()
        if data.draw(st.booleans()):
            self._autoclaim(data, data.draw(st.integers(1, 3)), data.draw(st.integers(1, 4)))

    # the invariants ------------------------------------------------------------------------
    @invariant()
    def redis_matches_the_model(self) -> None:
        rows = self.run(self.client.xpending_range(S, G, "-", "+", 10_000))
        actual = {
            r["message_id"].decode(): (r["consumer"].decode(), r["times_delivered"]) for r in rows
        }
        assert actual == {i: (h.owner, h.deliveries) for i, h in self.pel.items()}
        for i, (_, n) in actual.items():
            assert n >= self.most.get(i, 0), f"delivery count of {i} went down"
            self.most[i] = n
        # Every entry that was ever delivered is in exactly one place.
        delivered = set(self.most)
        places = Counter([*self.pel, *self.acked, *self.dead, *self.dropped])
        assert set(places) >= delivered
        assert all(n == 1 for n in places.values())
        assert self.dropped <= self.deleted
        if not self.dead_broken:
            letters = self.run(self.client.xrange(self.t[self.alive[0]].dead))
            assert [f[b"original_id"].decode() for _, f in letters] == self.dead


def _key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq)


@pytest.mark.timeout(300)  # shrinking a failure can take a while; a pass takes seconds
def test_stream_scripts_keep_every_entry_accounted_for(redis_url: str) -> None:
    StreamMachine.url = redis_url
    run_until_covered(StreamMachine, CASES, max_examples=100)
    print(f"\nmodel cases: {dict(StreamMachine.seen)}")
    assert min(StreamMachine.seen[k] for k in CASES) >= 1, StreamMachine.seen
