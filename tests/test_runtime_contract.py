"""pykka 4.5's contract where the engine relies on it, on the three runtimes: pykka's own ``ThreadingActor``, the
engine's ``SingletonActor`` and the ``PooledActor`` (one fixture parametrised by runtime, as pykka's test-suite
does). Each test makes the same assertion on all three, except where a runtime differs by design (said there).

No assertion on time; every wait has a generous deadline (a busy two-core machine).
"""

from __future__ import annotations

import gc
import logging
import queue
import re
import subprocess
import sys
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from pykka._envelope import Envelope

from engine.runtime import (
    BLOCKING_GET_MESSAGE,
    POOLED,
    THREADING,
    PooledActor,
    Runtime,
    SingletonActor,
    pooled_actor_refs,
)
from tests.kit import wait_for

WAIT_S = 60.0
ROOT = Path(__file__).resolve().parents[1]

SINGLETON = Runtime(name="singleton", actor_class=SingletonActor)


@pytest.fixture(params=[THREADING, SINGLETON, POOLED], ids=lambda runtime: runtime.name)
def runtime(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    rt: Runtime = request.param
    yield rt
    for other in (THREADING, POOLED):  # THREADING's stop_all takes the singletons too (a subclass)
        other.stop_all(timeout_s=WAIT_S)


def _echo_class(base: type[Any]) -> type[Any]:
    class Echo(base):  # type: ignore[misc,valid-type]
        def __init__(self) -> None:
            super().__init__()
            self.stopped = threading.Event()

        def on_receive(self, message: Any) -> Any:
            return ("echo", message)

        def on_stop(self) -> None:
            self.stopped.set()

    return Echo


# -- 1. SystemExit / KeyboardInterrupt in a handler stops every actor, pooled ones included --------------------


@pytest.mark.parametrize("exit_type", [SystemExit, KeyboardInterrupt])
def test_system_exit_in_a_handler_stops_every_actor_of_every_runtime(
    runtime: Runtime, exit_type: type[BaseException]
) -> None:
    class Exits(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> None:
            raise exit_type

    bystanders = [_echo_class(base).start() for base in (pykka.ThreadingActor, SingletonActor, PooledActor)]
    pooled_stopped = bystanders[2].proxy().stopped.get(timeout=WAIT_S)
    exits = Exits.start()
    exits.tell("exit")
    wait_for(lambda: not exits.is_alive(), message="the actor that raised stopped")
    wait_for(lambda: not any(ref.is_alive() for ref in bystanders), message="every bystander stopped")
    assert pooled_stopped.wait(WAIT_S), "the pooled actor ran on_stop"
    assert pooled_actor_refs() == []


# -- 2. a reply that cannot be set fails only that message --------------------------------------------------------


class _SetRaises(pykka.ThreadingFuture[Any]):
    """A reply target whose ``set`` raises before storing anything (``set_exception`` works)."""

    def set(self, value: Any | None = None) -> None:
        raise ValueError("reply refused")


def test_a_reply_that_raises_goes_to_the_caller_and_the_actor_lives(runtime: Runtime) -> None:
    ref = _echo_class(runtime.actor_class).start()
    reply = _SetRaises()
    ref.actor_inbox.put(Envelope("one", reply_to=reply))
    with pytest.raises(ValueError, match="reply refused"):
        reply.get(timeout=WAIT_S)
    assert ref.ask("two", timeout=WAIT_S) == ("echo", "two")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # pykka's thread, by design
def test_a_reply_that_cannot_be_set_at_all_fails_only_that_message(
    runtime: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    """The caller completed the future itself (gave up on it): the actor's ``set`` and ``set_exception`` both
    raise ``queue.Full``. Was, pooled: every actor in the process stopped, logged at debug. pykka's
    ``ThreadingActor`` differs by design here (its thread dies of the escaped error while ``is_alive()`` stays
    true); ``SingletonActor`` carries its own loop for that reason."""
    bystander = _echo_class(PooledActor).start()
    ref = _echo_class(runtime.actor_class).start()
    given_up = ref.ask("warm-up", block=False)
    given_up.get(timeout=WAIT_S)
    reply: pykka.Future[Any] = pykka.ThreadingFuture()
    reply.set_exception(exc_info=(pykka.Timeout, pykka.Timeout("caller gave up"), None))
    caplog.set_level(logging.ERROR, logger="engine.runtime")
    ref.actor_inbox.put(Envelope("one", reply_to=reply))
    if runtime is THREADING:
        name = ref.actor_class.__name__
        wait_for(lambda: not any(t.name.startswith(f"{name}-") for t in threading.enumerate()))
        assert ref.is_alive()  # pykka 4.5: a zombie that handles nothing more
        ref.actor_stopped.set()
        return
    assert ref.ask("two", timeout=WAIT_S) == ("echo", "two")
    assert bystander.ask("three", timeout=WAIT_S) == ("echo", "three")
    failed = [r for r in caplog.records if r.levelno == logging.ERROR and "Reply from" in r.getMessage()]
    assert len(failed) == 1
    assert failed[0].exc_info is not None and failed[0].exc_info[0] is queue.Full


# -- 3. a stopped actor is freed while a reference to it is held ---------------------------------------------------


def test_a_stopped_actor_is_freed_while_its_ref_is_held(runtime: Runtime) -> None:
    """Reference counting alone must free it: the engine freezes long-lived objects (``gc.freeze``), so a
    stopped follower kept by a cycle or by its inbox would stay for good."""
    started: list[weakref.ref[Any]] = []

    class Holder(runtime.actor_class):  # type: ignore[name-defined,misc]
        def __init__(self) -> None:
            super().__init__()
            self.state = bytearray(1 << 20)

        def on_start(self) -> None:
            started.append(weakref.ref(self))

        def on_receive(self, message: Any) -> Any:
            return message

    ref = Holder.start()
    assert ref.ask("hello", timeout=WAIT_S) == "hello"
    actor = started[0]
    gc.collect()
    gc.disable()
    try:
        assert ref.stop(timeout=WAIT_S) is True
        wait_for(lambda: actor() is None, message="the stopped actor was freed")
    finally:
        gc.enable()
    assert not ref.is_alive()
    with pytest.raises(pykka.ActorDeadError):
        ref.ask("late", timeout=WAIT_S)


def test_mail_that_races_the_stop_of_a_freed_pooled_actor_gets_actor_dead_error() -> None:
    ref = _echo_class(PooledActor).start()
    assert ref.stop(timeout=WAIT_S) is True
    late: pykka.Future[Any] = pykka.ThreadingFuture()
    ref.actor_inbox.put(Envelope("late", reply_to=late))  # what ask does when the stop lands after its check
    with pytest.raises(pykka.ActorDeadError, match="stopped before handling the message"):
        late.get(timeout=WAIT_S)


# -- 4. a handler that blocks on a future ------------------------------------------------------------------------


def test_a_blocking_get_in_a_handler(runtime: Runtime) -> None:
    """Differs by design: thread actors may block (pykka's behaviour); a pooled handler's ``get()`` raises at
    once instead of holding a shared worker, and the other pooled actors go on."""
    other = _echo_class(PooledActor).start()

    class Waits(runtime.actor_class):  # type: ignore[name-defined,misc]
        def on_receive(self, message: Any) -> Any:
            return other.ask(message, timeout=WAIT_S)

    waits = Waits.start()
    if runtime is POOLED:
        with pytest.raises(RuntimeError, match=re.escape(BLOCKING_GET_MESSAGE)):
            waits.ask("ping", timeout=WAIT_S)
        assert waits.is_alive()  # an ask's error goes to the caller
    else:
        assert waits.ask("ping", timeout=WAIT_S) == ("echo", "ping")
    assert other.ask("pong", timeout=WAIT_S) == ("echo", "pong")


def test_a_pooled_handler_may_not_get_even_a_done_future() -> None:
    """Deterministic: whether the value happens to be there already never decides if the handler is wrong."""
    done: pykka.Future[Any] = SingletonActor._create_future()
    done.set(1)

    class Gets(PooledActor):
        def on_receive(self, message: Any) -> Any:
            return done.get(timeout=WAIT_S)

    ref = Gets.start()
    with pytest.raises(RuntimeError, match="blocking get"):
        ref.ask("go", timeout=WAIT_S)
    assert done.get(timeout=WAIT_S) == 1  # plain threads block (or not) as in pykka


# -- 5. queued mail and on_stop at the end of the program ---------------------------------------------------------

_SCRIPT = """
import sys
import pykka
from engine.runtime import PooledActor, SingletonActor

base = {"threading": pykka.ThreadingActor, "singleton": SingletonActor, "pooled": PooledActor}[sys.argv[1]]
out = open(sys.argv[2], "a", buffering=1)

class Writer(base):
    def on_receive(self, message):
        out.write(f"{message}\\n")

    def on_stop(self):
        out.write("on_stop\\n")

ref = Writer.start()
for number in range(2000):
    ref.tell(number)
if sys.argv[3] == "stop_all":
    pykka.ActorRegistry.stop_all()
"""

_EXPECTED = [str(number) for number in range(2000)] + ["on_stop"]


def _run_script(runtime_name: str, out: Path, ending: str) -> None:
    subprocess.run(
        [sys.executable, "-c", _SCRIPT, runtime_name, str(out), ending], cwd=ROOT, check=True, timeout=WAIT_S * 2
    )


def test_stop_all_at_the_end_of_a_program_handles_queued_mail_and_runs_on_stop(
    runtime: Runtime, tmp_path: Path
) -> None:
    """pykka's way to end a program: ``ActorRegistry.stop_all()``. It must reach pooled actors too."""
    out = tmp_path / "out.txt"
    _run_script(runtime.name, out, "stop_all")
    assert out.read_text().splitlines() == _EXPECTED


def test_pooled_actors_finish_their_mail_and_run_on_stop_at_interpreter_exit(tmp_path: Path) -> None:
    """A program that just ends. Pooled only: a thread actor keeps pykka's program alive until it is stopped
    (non-daemon thread), so there is nothing to compare; pooled workers are daemon threads, and an exit hook
    stops their actors the ``stop_all`` way."""
    out = tmp_path / "out.txt"
    _run_script("pooled", out, "just_end")
    assert out.read_text().splitlines() == _EXPECTED
