"""A Step's stream loop and its subscription: wake-ups, heartbeats, hang-ups, ephemeral
frames riding along with commits (STREAM-2000, STREAM-2002, STREAM-2003, STREAM-2004).

Heartbeats run on the injected clock: the tests move a fake clock instead of sleeping
[NERVE-4060].
"""

from __future__ import annotations

import anyio
import anyio.lowlevel
import pytest
from prometheus_client import CollectorRegistry

from contracts.events import FrameType, MetricsData, NarrationData, sse_frame
from orchestrator_core.clock import FakeClock
from orchestrator_core.eventlog import EventLog
from orchestrator_core.metrics import Metrics
from orchestrator_core.store import SqliteStore
from orchestrator_core.streams import KEEP_ALIVE, StepStream
from test_harness.support import TICK, settle, until

pytestmark = pytest.mark.anyio

_METRICS = MetricsData(tokens_out=16, elapsed_ms=8, tokens_per_s=2000.0)
_METRICS_JSON = (b'{"tokens_out":16,"elapsed_ms":8,"tokens_per_s":2000.0,"tokens_in":0,'
                 b'"cost_usd":0.0,"reserved_tokens_out":null}')

REAL_TIME_LIMIT_S = 5.0
"""Each test finishes within this much real time, whatever its fake time."""


@pytest.fixture
def clock() -> FakeClock:
    """The fake clock the event log's heartbeats run on."""
    return FakeClock()


@pytest.fixture
def log(store: SqliteStore, clock: FakeClock) -> EventLog:
    """An event log over the fresh store, with step ``s`` of run ``r`` open."""
    lg = EventLog(store, clock, Metrics(CollectorRegistry()), ephemeral_capacity=4)
    lg.open("s", "r")
    return lg


class _Client:
    """Collects what a stream writes; can hang up after a number of writes."""

    def __init__(self, stream: StepStream, hang_up_after: int | None = None) -> None:
        self.stream = stream
        self.writes: list[bytes] = []
        self.hang_up_after = hang_up_after

    async def write(self, chunk: bytes) -> None:
        self.writes.append(chunk)
        if self.hang_up_after is not None and len(self.writes) >= self.hang_up_after:
            self.stream.hang_up()


class TestSseFrame:
    """SSE framing is the wire format of specs/20_stream_and_replay.md, byte for byte."""

    def test_every_frame_type_gives_the_wire_bytes(self) -> None:
        """For every known frame type and an unknown one, with and without an id."""
        data = b'{"i":6,"t":" seed","id":117}'
        for event in [*(t.value for t in FrameType), "something_new"]:
            assert sse_frame(7, event, data) == \
                b"id: 7\nevent: " + event.encode() + b"\ndata: " + data + b"\n\n"
            assert sse_frame(None, event, data) == \
                b"event: " + event.encode() + b"\ndata: " + data + b"\n\n"


class TestSubscription:
    """A subscriber sleeps on one future; commits, heartbeats and hang-ups end the sleep."""

    async def test_a_heartbeat_ends_an_idle_wait_at_heartbeat_s_of_the_clock(
            self, log: EventLog, clock: FakeClock) -> None:
        """Nothing committed: ``wait`` is still asleep a tick before 10 s of a 10 s
        heartbeat and says a keep-alive is due (False) at 10 s of the injected clock
        [NERVE-4060]."""
        sub = log.subscribe("s", heartbeat_s=10.0)
        results: list[bool] = []

        async def reader() -> None:
            results.append(await sub.wait())

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(reader)
                await until(lambda: clock.deadlines == [10.0])
                clock.advance(10.0 - TICK)
                await settle()
                assert results == []
                clock.advance(TICK)
        log.unsubscribe(sub)
        assert (results, clock.pending) == ([False], 0)

    async def test_a_commit_during_the_wait_ends_it_with_true(self, log: EventLog) -> None:
        """A group commit wakes a sleeping subscriber."""
        sub = log.subscribe("s", heartbeat_s=60.0)
        results: list[bool] = []
        async with anyio.create_task_group() as tg:
            async def reader() -> None:
                results.append(await sub.wait())

            tg.start_soon(reader)
            await anyio.lowlevel.checkpoint()
            log.append_recorded("s", "started", b"{}")
            log.flush()
        log.unsubscribe(sub)
        assert results == [True]

    async def test_a_hang_up_wakes_the_subscriber_and_marks_it_gone(
            self, log: EventLog) -> None:
        """The disconnect callback ends the wait at once."""
        sub = log.subscribe("s", heartbeat_s=60.0)
        async with anyio.create_task_group() as tg:
            tg.start_soon(sub.wait)
            await anyio.lowlevel.checkpoint()
            sub.hang_up()
        log.unsubscribe(sub)
        assert (sub.gone, log.subscribers("s")) == (True, 0)

    async def test_an_ephemeral_frame_waits_for_the_pending_commit(
            self, log: EventLog) -> None:
        """With durable frames pending, a metrics frame does not wake the reader; the
        commit does, and both are there to read."""
        sub = log.subscribe("s")
        log.append_recorded("s", "started", b"{}")
        log.publish_ephemeral("s", _METRICS)
        with anyio.move_on_after(0.02) as asleep:
            await sub.wait()
        log.flush()
        assert (asleep.cancelled_caught, await sub.wait()) == (True, True)
        assert (log.read("s", -1)[0], sub.drain_ephemeral()) == (
            [b"id: 0\nevent: started\ndata: {}\n\n"],
            [b"event: metrics\ndata: " + _METRICS_JSON + b"\n\n"])

    async def test_an_ephemeral_frame_with_nothing_pending_wakes_at_once(
            self, log: EventLog) -> None:
        """No commit is coming: the reader is woken for the ephemeral frame itself."""
        sub = log.subscribe("s")
        log.publish_ephemeral("s", NarrationData(text="hi"))
        assert (await sub.wait(), sub.drain_ephemeral()) == (
            True, [b'event: narration\ndata: {"text":"hi"}\n\n'])


class TestStepStream:
    """The stream loop writes committed frames in order, batched, until the terminal one."""

    async def test_a_finished_step_is_written_whole_in_one_chunk(self, log: EventLog) -> None:
        """Every frame, in order, one write; the loop reports the terminal frame."""
        log.append_recorded("s", "started", b"{}")
        log.append_recorded("s", "token", b'{"i":0,"t":"a","id":1}')
        log.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
        left: list[str] = []
        stream = StepStream(log, "s", -1, 60.0, left.append)
        client = _Client(stream)
        assert await stream.pump(client.write) is True
        assert (client.writes, left) == ([
            b"id: 0\nevent: started\ndata: {}\n\n"
            b'id: 1\nevent: token\ndata: {"i":0,"t":"a","id":1}\n\n'
            b"id: 2\nevent: end\ndata: {}\n\n"], [])

    async def test_the_cursor_resumes_after_the_last_event_id(self, log: EventLog) -> None:
        """Cursor 0 starts with frame 1 (STREAM-2004)."""
        log.append_recorded("s", "started", b"{}")
        log.finish_recorded("s", "end", b"{}", {"status": "succeeded"})
        stream = StepStream(log, "s", 0, 60.0, lambda _s: None)
        client = _Client(stream)
        await stream.pump(client.write)
        assert client.writes == [b"id: 1\nevent: end\ndata: {}\n\n"]

    async def test_durable_frames_then_ephemeral_frames_in_one_write(
            self, log: EventLog) -> None:
        """A write carries the committed frames first, then the buffered ephemeral ones."""
        log.append_recorded("s", "started", b"{}")
        stream = StepStream(log, "s", -1, 60.0, lambda _s: None)
        client = _Client(stream, hang_up_after=1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(stream.pump, client.write)
            await anyio.lowlevel.checkpoint()
            log.publish_ephemeral("s", _METRICS)
            log.flush()
        assert client.writes == [b"id: 0\nevent: started\ndata: {}\n\n"
                                 b"event: metrics\ndata: " + _METRICS_JSON + b"\n\n"]

    async def test_an_idle_stream_gets_keep_alives_and_a_hang_up_abandons_it(
            self, log: EventLog, clock: FakeClock) -> None:
        """Idle: ``: keep-alive`` at 10 s and 20 s of a 10 s heartbeat on the injected
        clock, none a tick before; the client gone before the terminal frame: the loop
        ends without it and reports the Step as abandoned (STREAM-2002) [NERVE-4060]."""
        left: list[str] = []
        stream = StepStream(log, "s", -1, 10.0, left.append)
        client = _Client(stream, hang_up_after=2)
        written_at: list[float] = []

        async def write(chunk: bytes) -> None:
            written_at.append(clock.monotonic())
            await client.write(chunk)

        ended: list[bool] = []

        async def pump() -> None:
            ended.append(await stream.pump(write))

        async def beat(due: float, writes_before: int) -> None:
            """Quiet a tick before ``due``, one write more at ``due``."""
            await until(lambda: clock.deadlines == [due])
            clock.advance(10.0 - TICK)
            await settle()
            assert len(client.writes) == writes_before
            clock.advance(TICK)
            await until(lambda: len(client.writes) == writes_before + 1)

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(pump)
                await beat(10.0, 0)
                await beat(20.0, 1)
        assert (ended, client.writes, written_at, left, log.subscribers("s")) == (
            [False], [KEEP_ALIVE, KEEP_ALIVE], [10.0, 20.0], ["s"], 0)

    async def test_a_write_restarts_the_heartbeat(
            self, log: EventLog, clock: FakeClock) -> None:
        """A frame written at 5 s moves the next keep-alive of a 10 s heartbeat from 10 s
        to 15 s of the injected clock [NERVE-4060]."""
        stream = StepStream(log, "s", -1, 10.0, lambda _s: None)
        client = _Client(stream, hang_up_after=2)
        written_at: list[float] = []

        async def write(chunk: bytes) -> None:
            written_at.append(clock.monotonic())
            await client.write(chunk)

        with anyio.fail_after(REAL_TIME_LIMIT_S):
            async with anyio.create_task_group() as tg:
                tg.start_soon(stream.pump, write)
                await until(lambda: clock.deadlines == [10.0])
                clock.advance(5.0)
                log.append_recorded("s", "started", b"{}")
                log.flush()
                await until(lambda: len(client.writes) == 1)
                clock.advance(5.0)
                await settle()
                assert len(client.writes) == 1
                clock.advance(5.0 - TICK)
                await settle()
                assert len(client.writes) == 1
                clock.advance(TICK)
        assert (client.writes, written_at) == (
            [b"id: 0\nevent: started\ndata: {}\n\n", KEEP_ALIVE], [5.0, 15.0])
