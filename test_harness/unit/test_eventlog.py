"""The event log: group commit, cursors, ephemeral backpressure (STREAM-2000, STREAM-2003)."""

from __future__ import annotations

import anyio
import pytest
from prometheus_client import CollectorRegistry

from contracts.events import NarrationData
from orchestrator_core.clock import FakeClock
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.store import SqliteStore
from test_harness.support import settle, until


@pytest.fixture
def metrics() -> Metrics:
    """Metrics on a fresh registry."""
    return Metrics(CollectorRegistry())


@pytest.fixture
def log(store: SqliteStore, metrics: Metrics) -> EventLog:
    """An event log with step ``s`` open and a large group size."""
    lg = EventLog(store, FakeClock(), metrics, commit_max_frames=4, ephemeral_capacity=2)
    lg.open("s", "r")
    return lg


class TestGroupCommit:
    """Durable frames are committed in groups; readers never see uncommitted frames."""

    def test_frames_are_invisible_until_committed(self, log: EventLog,
                                                  store: SqliteStore) -> None:
        """Appended but pending frames are neither on disk nor shown to readers."""
        log.append_recorded("s", "started", b"{}")
        log.append_recorded("s", "token", b'{"i":0}')
        assert log.read("s", -1) == ([], False)
        assert store.read_events("s", -1) == []
        log.flush()
        assert [seq for seq, _t, _d in store.read_events("s", -1)] == [0, 1]
        frames, done = log.read("s", -1)
        assert (frames[1], done) == (b'id: 1\nevent: token\ndata: {"i":0}\n\n', False)

    def test_a_full_group_commits_at_once(self, log: EventLog, store: SqliteStore,
                                          metrics: Metrics) -> None:
        """``commit_max_frames`` pending frames trigger the commit."""
        for i in range(4):
            log.append_recorded("s", "token", b'{"i":%d}' % i)
        assert len(store.read_events("s", -1)) == 4
        assert metrics.registry.get_sample_value("orchestrator_event_group_commits_total") == 1

    def test_terminal_frame_commits_with_the_status(self, log: EventLog,
                                                    store: SqliteStore) -> None:
        """Pending frames, the terminal frame and the status change land together."""
        log.append_recorded("s", "started", b"{}")
        seq = log.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
        step = store.get_step("s")
        assert step is not None
        assert (seq, step.status, step.last_seq) == (1, "succeeded", 1)
        assert log.read("s", 0)[1] is True
        with pytest.raises(RuntimeError):
            log.append_recorded("s", "token", b"{}")

    def test_a_finished_step_reads_the_same_bytes_from_disk(self, log: EventLog) -> None:
        """After eviction from the cache the disk gives identical SSE bytes."""
        log.append_recorded("s", "started", b"{}")
        log.append_recorded("s", "token", b'{"i":0,"t":"a","id":1}')
        log.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
        cached = log.read("s", -1)
        log._live.clear()
        assert log.read("s", -1) == cached
        assert log.read("s", 1) == (cached[0][2:], True)


class TestEphemeralBackpressure:
    """metrics/narration go through a bounded drop-oldest buffer per subscriber."""

    def test_a_slow_subscriber_loses_the_oldest_and_drops_are_counted(
            self, log: EventLog, metrics: Metrics) -> None:
        """Capacity 2: the third frame pushes out the first, counted by frame type."""
        sub = log.subscribe("s")
        for n in range(3):
            log.publish_ephemeral("s", NarrationData(text=str(n)))
        assert sub.drain_ephemeral() == [b'event: narration\ndata: {"text":"1"}\n\n',
                                         b'event: narration\ndata: {"text":"2"}\n\n']
        assert sub.dropped == 1
        assert metrics.registry.get_sample_value(
            "orchestrator_sse_dropped_frames_total", {"frame_type": "narration"}) == 1

    def test_durable_frames_are_never_dropped(self, log: EventLog) -> None:
        """A subscriber that reads late still gets every token frame."""
        log.subscribe("s")
        for i in range(40):
            log.append_recorded("s", "token", b'{"i":%d}' % i)
        log.flush()
        frames, _ = log.read("s", -1)
        assert len(frames) == 40

    @pytest.mark.anyio
    async def test_a_commit_wakes_the_subscriber(self, log: EventLog) -> None:
        """Subscribers wait on a flag the commit sets."""
        sub = log.subscribe("s")
        log.append_recorded("s", "started", b"{}")
        log.flush()
        await sub.wait()  # returns at once: the commit already set the flag
        assert log.read("s", -1)[0] == [b"id: 0\nevent: started\ndata: {}\n\n"]


class TestCommitWindow:
    """The group-commit window batches frames; it never holds back the frame of a quiet
    log (STREAM-2000)."""

    @pytest.mark.anyio
    async def test_a_frame_of_a_quiet_log_commits_on_the_next_loop_pass(
            self, store: SqliteStore, metrics: Metrics) -> None:
        """With a 30 s window, the first frame is still committed within a few loop
        passes: nothing was committed within the window, so there is nothing to batch
        it with."""
        log = EventLog(store, FakeClock(), metrics, commit_interval_s=30.0)
        log.open("s", "r")
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.run_flusher)
            log.append_recorded("s", "started", b"{}")
            with anyio.fail_after(5):
                await until(lambda: store.read_events("s", -1) != [])
            tg.cancel_scope.cancel()
        assert store.read_events("s", -1) == [(0, "started", b"{}")]

    @pytest.mark.anyio
    async def test_a_frame_right_after_a_commit_waits_for_the_window(
            self, store: SqliteStore, metrics: Metrics) -> None:
        """A frame appended within the window of the previous commit waits for that window
        to end, so the frames of a busy log still share a commit."""
        log = EventLog(store, FakeClock(), metrics, commit_interval_s=30.0)
        log.open("s", "r")
        async with anyio.create_task_group() as tg:
            tg.start_soon(log.run_flusher)
            log.append_recorded("s", "started", b"{}")
            with anyio.fail_after(5):
                await until(lambda: store.read_events("s", -1) != [])
            log.append_recorded("s", "token", b'{"i":0}')
            log.append_recorded("s", "token", b'{"i":1}')
            await settle()
            held = [seq for seq, _t, _d in store.read_events("s", -1)]
            tg.cancel_scope.cancel()
        assert (held, log.read("s", -1)[0]) == (
            [0], [b"id: 0\nevent: started\ndata: {}\n\n"])
