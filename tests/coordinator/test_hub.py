"""The in-process hub: coalescing, ordering, shutdown."""

from __future__ import annotations

import asyncio

from ledgerflow.coordinator.fanout import Hub
from ledgerflow.v1 import ledger_pb2 as pb


def snap(run_id: str, seq: int, status: int = pb.RUN_STATUS_RUNNING) -> pb.RunSnapshot:
    return pb.RunSnapshot(run_id=run_id, last_seq=seq, status=status)  # type: ignore[arg-type]


async def test_a_slow_subscriber_keeps_only_the_latest_snapshot() -> None:
    hub = Hub()
    with hub.watch_run("r") as sub:
        for seq in range(1, 10_001):
            hub.publish(snap("r", seq))
        latest = await sub.next()
        assert latest is not None
        assert latest.last_seq == 10_000
        hub.publish(snap("r", 5))  # older (e.g. a late NOTIFY of an own commit): ignored
        hub.publish(snap("r", 10_001))
        following = await sub.next()
        assert following is not None
        assert following.last_seq == 10_001


async def test_list_subscription_coalesces_per_run_in_change_order() -> None:
    hub = Hub()
    with hub.watch_runs(lambda s: s.run_id != "hidden") as sub:
        hub.publish(snap("a", 1))
        hub.publish(snap("b", 1))
        hub.publish(snap("hidden", 1))
        hub.publish(snap("a", 2))
        got = [await sub.next(), await sub.next()]
        assert [(s.run_id, s.last_seq) for s in got if s is not None] == [("b", 1), ("a", 2)]


async def test_close_wakes_every_waiting_subscriber_with_none() -> None:
    hub = Hub()
    with hub.watch_run("r") as one, hub.watch_runs(lambda _s: True) as many:
        waiting = asyncio.gather(one.next(), many.next())
        hub.close()
        assert list(await waiting) == [None, None]
    assert not hub.wants("r")


async def test_a_terminal_only_subscription_is_offered_the_end_and_nothing_before() -> None:
    hub = Hub()
    with hub.watch_run("r", terminal_only=True) as ends:
        # Nobody needs a copy of a change that does not end the run...
        assert not hub.wants("r", terminal=False)
        assert hub.wants("r", terminal=True)
        assert hub.wants("r")  # unknown (a NOTIFY from another coordinator): maybe the end
        assert hub.watched_runs() == ["r"]
        waiting = asyncio.ensure_future(ends.next())
        for seq in range(1, 6):
            hub.publish(snap("r", seq))
        await asyncio.sleep(0)  # let the waiter look: it must still be waiting
        assert not waiting.done()
        hub.publish(snap("r", 6, pb.RUN_STATUS_COMPLETED))
        final = await waiting
        assert final is not None
        assert (final.last_seq, final.status) == (6, pb.RUN_STATUS_COMPLETED)
        # ...while a subscriber to every change still gets one.
        with hub.watch_run("r") as every:
            assert hub.wants("r", terminal=False)
            hub.publish(snap("r", 7))
            following = await every.next()
            assert following is not None
            assert following.last_seq == 7
    assert not hub.wants("r")
    assert hub.watched_runs() == []
