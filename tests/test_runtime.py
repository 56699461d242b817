"""The actor runtime: one semantics suite run on pykka's ThreadingActor and on our PooledActor.

Never asserts on time (other suites share this 2-core machine); every wait has a generous timeout so a
bug fails as ``pykka.Timeout`` instead of hanging.
"""

from __future__ import annotations

import gc
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pykka
import pytest

from engine._pool import PooledInbox
from engine.runtime import (
    POOLED,
    THREADING,
    PooledActor,
    Runtime,
    WorkerPool,
    configure_pool,
    get_pooled_by_urn,
    long_lived_allocations,
    mailbox_depth,
    pool_stats,
    pooled_actor_refs,
    stop_actors,
    tune_gc,
)

WAIT_S = 60.0


class TwoWorkerPooledActor(PooledActor):
    """Pooled on 2 workers with short turns: makes overlap and lost wake-up bugs likely to show."""

    actor_pool = WorkerPool(workers=2, max_messages_per_turn=4)


POOLED_2W = Runtime(name="pooled-2w", actor_class=TwoWorkerPooledActor)


@pytest.fixture(params=[THREADING, POOLED, POOLED_2W], ids=lambda runtime: runtime.name)
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    rt: Runtime = request.param
    yield rt
    rt.stop_all(timeout_s=WAIT_S)


def _echo_class(runtime: Runtime) -> type[Any]:
    class Echo(runtime.actor_class):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.told: list[Any] = []
            self.attr = "value"

        def on_receive(self, message: Any) -> Any:
            if message == "boom":
                raise ValueError("boom")
            self.told.append(message)
            return ("echo", message)

        def add(self, a: int, b: int) -> int:
            return a + b

        def fail(self) -> None:
            raise KeyError("from proxy")

    return Echo


# -- semantics, every runtime ------------------------------------------------------------------------------


def test_tell_ask_and_proxy(runtime: Runtime) -> None:
    ref = _echo_class(runtime).start()
    ref.tell("a")
    assert ref.ask("b", timeout=WAIT_S) == ("echo", "b")
    proxy = ref.proxy()
    assert proxy.add(2, 3).get(timeout=WAIT_S) == 5
    assert proxy.attr.get(timeout=WAIT_S) == "value"
    assert proxy.told.get(timeout=WAIT_S) == ["a", "b"]
    future = ref.ask("c", block=False)
    assert isinstance(future, pykka.Future)
    assert future.get(timeout=WAIT_S) == ("echo", "c")


def test_lifecycle_hooks_run_in_order(runtime: Runtime) -> None:
    events: list[str] = []
    stopped = threading.Event()

    class Lifecycle(runtime.actor_class):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            events.append("init")
            self.actor_ref.tell("told-from-init")

        def on_start(self) -> None:
            events.append("on_start")

        def on_receive(self, message: Any) -> None:
            events.append(message)

        def on_stop(self) -> None:
            events.append("on_stop")
            stopped.set()

    ref = Lifecycle.start()
    ref.tell("m1")
    assert ref.stop(timeout=WAIT_S) is True
    assert stopped.wait(WAIT_S)
    assert events == ["init", "on_start", "told-from-init", "m1", "on_stop"]
    assert not ref.is_alive()
    assert ref.stop(timeout=WAIT_S) is False  # already dead


def test_exception_in_ask_goes_to_caller_and_actor_lives(runtime: Runtime) -> None:
    ref = _echo_class(runtime).start()
    with pytest.raises(ValueError, match="boom"):
        ref.ask("boom", timeout=WAIT_S)
    with pytest.raises(KeyError, match="from proxy"):
        ref.proxy().fail().get(timeout=WAIT_S)
    assert ref.is_alive()
    assert ref.ask("still here", timeout=WAIT_S) == ("echo", "still here")


def test_exception_in_tell_calls_on_failure_and_stops(runtime: Runtime) -> None:
    failures: list[BaseException | None] = []
    on_stop_called = threading.Event()
    failed = threading.Event()

    class Fragile(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> None:
            raise RuntimeError(message)

        def on_failure(self, exc_type: Any, exc_value: Any, tb: Any) -> None:
            failures.append(exc_value)
            failed.set()

        def on_stop(self) -> None:
            on_stop_called.set()

    ref = Fragile.start()
    ref.tell("bad message")
    assert failed.wait(WAIT_S)
    assert isinstance(failures[0], RuntimeError)
    assert str(failures[0]) == "bad message"
    assert not ref.is_alive()
    assert not on_stop_called.is_set()  # pykka: on_failure instead of on_stop
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("after death")


def test_pending_asks_get_actor_dead_error_on_stop(runtime: Runtime) -> None:
    gate = threading.Event()
    entered = threading.Event()

    class Slow(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> Any:
            if message == "block":
                entered.set()
                gate.wait(WAIT_S)  # a test-only block, to queue mail behind the stop
            return message

    ref = Slow.start()
    ref.tell("block")
    assert entered.wait(WAIT_S)
    stop_future = ref.stop(block=False)
    pending = [ref.ask(i, block=False) for i in range(3)]
    gate.set()
    assert stop_future.get(timeout=WAIT_S) is True
    for future in pending:
        with pytest.raises(pykka.ActorDeadError):
            future.get(timeout=WAIT_S)


def test_tell_and_ask_to_dead_actor_raise(runtime: Runtime) -> None:
    ref = _echo_class(runtime).start()
    ref.stop(timeout=WAIT_S)
    with pytest.raises(pykka.ActorDeadError):
        ref.tell("x")
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("x", timeout=WAIT_S)


def test_message_order_per_sender_is_preserved(runtime: Runtime) -> None:
    ref = _echo_class(runtime).start()
    senders, per_sender = 4, 2_000

    def send(sender: int) -> None:
        for seq in range(per_sender):
            ref.tell((sender, seq))

    threads = [threading.Thread(target=send, args=(s,)) for s in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    told = ref.proxy().told.get(timeout=WAIT_S)
    assert len(told) == senders * per_sender  # nothing lost
    for sender in range(senders):
        assert [seq for s, seq in told if s == sender] == list(range(per_sender))


def test_no_concurrent_turns_for_one_actor(runtime: Runtime) -> None:
    lock = threading.Lock()

    class Counted(runtime.actor_class):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.inside = 0
            self.max_inside = 0
            self.handled = 0

        def on_receive(self, message: Any) -> None:
            with lock:
                self.inside += 1
                self.max_inside = max(self.max_inside, self.inside)
            time.sleep(0)  # yield the GIL: an overlapping turn would run now
            with lock:
                self.inside -= 1
                self.handled += 1

    refs = [Counted.start() for _ in range(4)]
    per_thread = 1_000

    def flood() -> None:
        for _ in range(per_thread):
            for ref in refs:
                ref.tell("x")

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    for ref in refs:
        proxy = ref.proxy()
        assert proxy.handled.get(timeout=WAIT_S) == 4 * per_thread
        assert proxy.max_inside.get(timeout=WAIT_S) == 1


def test_flooded_actor_does_not_starve_another(runtime: Runtime) -> None:
    flood_size = 500
    quiet_ran = threading.Event()
    progress = {"flooded_handled": 0}

    class Flooded(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> None:
            if not quiet_ran.is_set():
                time.sleep(0.002)  # slow until the other actor got its turn
            progress["flooded_handled"] += 1

    class Quiet(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> int:
            quiet_ran.set()
            return progress["flooded_handled"]

    flooded, quiet = Flooded.start(), Quiet.start()
    quiet.ask("warm up", timeout=WAIT_S)
    quiet_ran.clear()
    for _ in range(flood_size):
        flooded.tell("work")
    handled_before_quiet = quiet.ask("ping", timeout=WAIT_S)
    assert handled_before_quiet < flood_size
    flooded.stop(timeout=WAIT_S)


def test_mailbox_depth(runtime: Runtime) -> None:
    gate = threading.Event()
    entered = threading.Event()

    class Blocked(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> None:
            if message == "block":
                entered.set()
                gate.wait(WAIT_S)

    ref = Blocked.start()
    ref.tell("block")
    assert entered.wait(WAIT_S)
    for _ in range(10):
        ref.tell("queued")
    assert mailbox_depth(ref) == 10
    if issubclass(runtime.actor_class, PooledActor) and runtime is POOLED:
        stats = pool_stats()
        assert stats.mailbox_depth_max >= 10
        assert stats.mailbox_depth_total >= 10
    gate.set()
    ref.stop(timeout=WAIT_S)
    assert mailbox_depth(ref) == 0


def test_registry(runtime: Runtime) -> None:
    ref: pykka.ActorRef[Any] = _echo_class(runtime).start()
    if issubclass(runtime.actor_class, PooledActor):
        assert ref not in pykka.ActorRegistry.get_all()  # documented: pooled actors have their own
        assert ref in pooled_actor_refs()
        assert get_pooled_by_urn(ref.actor_urn) is ref
    else:
        assert pykka.ActorRegistry.get_by_urn(ref.actor_urn) is ref
    ref.stop(timeout=WAIT_S)
    assert ref not in pykka.ActorRegistry.get_all()
    assert ref not in pooled_actor_refs()
    assert get_pooled_by_urn(ref.actor_urn) is None


def test_stop_actors_stops_all_at_once(runtime: Runtime) -> None:
    stopped: list[str] = []
    lock = threading.Lock()

    class Stoppable(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_stop(self) -> None:
            with lock:
                stopped.append(self.actor_urn)

    refs = [Stoppable.start() for _ in range(50)]
    dead = Stoppable.start()
    dead.stop(timeout=WAIT_S)
    stop_actors([*refs, dead], timeout_s=WAIT_S)
    assert not any(ref.is_alive() for ref in refs)
    assert sorted(stopped) == sorted(ref.actor_urn for ref in [*refs, dead])


# -- pooled runtime only -----------------------------------------------------------------------------------


def test_pooled_hooks_run_on_pool_workers() -> None:
    threads: list[str] = []

    class WhereAmI(PooledActor):
        def on_start(self) -> None:
            threads.append(threading.current_thread().name)

        def on_receive(self, message: Any) -> str:
            return threading.current_thread().name

    ref = WhereAmI.start()
    try:
        assert ref.ask("where", block=True, timeout=WAIT_S).startswith("pooled-worker-")
        assert threads[0].startswith("pooled-worker-")
    finally:
        ref.stop(timeout=WAIT_S)


def test_configure_pool_after_first_use_raises() -> None:
    ref = PooledActor.start()  # makes sure the default pool runs
    try:
        with pytest.raises(RuntimeError):
            configure_pool(workers=2)
    finally:
        ref.stop(timeout=WAIT_S)


def test_100k_pooled_actors_fan_out_and_stop() -> None:
    count = 100_000
    all_replied = threading.Event()

    class Collector(PooledActor):
        def __init__(self) -> None:
            super().__init__()
            self.seen: set[int] = set()

        def on_receive(self, message: int) -> None:
            self.seen.add(message)
            if len(self.seen) == count:
                all_replied.set()

    class Follower(PooledActor):
        def __init__(self, number: int, collector: pykka.ActorRef[Any]) -> None:
            super().__init__()
            self.number = number
            self.collector = collector

        def on_receive(self, message: Any) -> None:
            self.collector.tell(self.number)

    collector = Collector.start()
    followers = [Follower.start(n, collector) for n in range(count)]
    try:
        for ref in followers:
            ref.tell("signal")
        assert all_replied.wait(300)
        assert collector.proxy().seen.get(timeout=WAIT_S) == set(range(count))
    finally:
        stop_actors([*followers, collector], timeout_s=300)
    assert not any(ref.is_alive() for ref in followers)
    assert not collector.is_alive()
    assert all(ref not in pooled_actor_refs() for ref in followers[:10])


def test_no_lost_wake_up_when_mail_races_the_end_of_a_turn(runtime: Runtime) -> None:
    # Actors that keep going idle, fed from several threads, with a tiny GIL switch interval so that
    # puts land between "mailbox empty?" and "release" at the end of turns. A lost wake-up leaves mail
    # unhandled and the final ask times out.
    class Counter(runtime.actor_class):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.handled = 0

        def on_receive(self, message: Any) -> None:
            self.handled += 1

    refs = [Counter.start() for _ in range(8)]
    per_thread = 2_000

    def feed() -> None:
        for i in range(per_thread):
            refs[i % len(refs)].tell(i)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=feed) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
    finally:
        sys.setswitchinterval(old_interval)
    handled = [ref.ask(pykka.messages.ProxyGetAttr(attr_path=("handled",)), timeout=WAIT_S) for ref in refs]
    assert sum(handled) == 3 * per_thread


def test_pooled_mailbox_is_created_by_the_first_put_and_racing_first_puts_share_it() -> None:
    # An idle pooled actor holds no deque (memory per idle follower); several threads telling a fresh actor at
    # once must all land in one deque, or a message is lost and the final ask comes back short.
    class Counter(PooledActor):
        def __init__(self) -> None:
            super().__init__()
            self.handled = 0

        def on_receive(self, message: Any) -> None:
            self.handled += 1

    senders = 4
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for _ in range(50):
            ref = Counter.start()
            inbox = ref.actor_inbox
            assert isinstance(inbox, PooledInbox) and inbox._queue is None  # the allocation this test is about
            assert mailbox_depth(ref) == 0
            barrier = threading.Barrier(senders)

            def tell_once(target: pykka.ActorRef[Any] = ref, start: threading.Barrier = barrier) -> None:
                start.wait(WAIT_S)
                target.tell("hello")

            threads = [threading.Thread(target=tell_once) for _ in range(senders)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(WAIT_S)
            assert ref.ask(pykka.messages.ProxyGetAttr(attr_path=("handled",)), timeout=WAIT_S) == senders
            ref.stop(timeout=WAIT_S)
    finally:
        sys.setswitchinterval(old_interval)


def test_tune_gc_sets_the_youngest_generation_only() -> None:

    before = gc.get_threshold()
    try:
        tune_gc(gen0_threshold=12_345)
        assert gc.get_threshold() == (12_345, before[1], before[2])
        tune_gc(gen0_threshold=0)  # 0: left as it is
        assert gc.get_threshold() == (12_345, before[1], before[2])
    finally:
        gc.set_threshold(*before)


def test_long_lived_allocations_freezes_what_was_built() -> None:

    frozen_before = gc.get_freeze_count()
    try:
        with long_lived_allocations():
            assert not gc.isenabled()
            kept = [[i] for i in range(1000)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen_before + len(kept)
    finally:
        gc.unfreeze()
