"""The pooled actor runtime: many cheap actors on a few shared worker threads.

``pykka.ThreadingActor`` costs one OS thread per actor. Measured here: 10,000 of them took 5.6 s and
227 MB to start and 107 s to send one message to each and back (GIL convoy). The engine holds one
``FollowerActor`` per user, up to 100,000, so those run as :class:`PooledActor`: a pykka actor whose
mailbox, on the first message into an idle actor, queues the actor on a shared :class:`WorkerPool`.
A worker gives it one *turn* of at most ``max_messages_per_turn`` messages, then re-queues it behind the
others if mail is left (fairness). One actor never runs two turns at once, so actor state needs no lock.

Rules for code running in pooled actors (and, in this engine, in every actor):

* **Handlers never block on another actor's future** (``ask(...).get()``, ``future.get()``), nor on
  I/O. A blocked handler holds a shared worker; with all workers blocked, every pooled actor stalls,
  and if the awaited actor is pooled too it can never run: deadlock. So ``get()`` on the future of an ask
  to a pooled or singleton actor (:class:`ReplyFuture`) raises ``RuntimeError`` on a pool worker. Replies
  come back as messages (``reply_to.tell(...)``). ``ask(...).get()`` is for the composition root, the
  admin socket and tests, i.e. plain threads.
* Handlers are short: a turn of 32 slow messages delays every other actor on that worker.

Semantics are pykka's (the per-message code mirrors ``Actor._actor_loop_running`` and calls pykka's own
``_actor_loop_setup``, ``_handle_receive`` and ``_actor_loop_teardown``): ``tell``/``ask``/``proxy``;
``on_start`` runs on a worker before the first message; an exception in an ``ask`` goes to the caller
and the actor lives; an exception in a ``tell`` stops the actor and calls ``on_failure``; pending asks
get ``ActorDeadError`` when the actor stops; ``tell`` to a dead actor raises ``ActorDeadError``; a
``SystemExit``/``KeyboardInterrupt`` in a handler stops every actor. Where pykka's thread would die (a reply
that cannot be set), only that message fails, logged at error; ``SingletonActor`` does the same. A stopped
pooled actor is let go by its inbox, so holding its ``ActorRef`` does not keep its state.

One deliberate difference, the registry: pooled actors are **not** in ``pykka.ActorRegistry``. Its
list makes unregister O(n), so stopping 100k actors is O(n²), and ``ActorRegistry.stop_all`` stops them
one blocking round trip at a time (445 s for 100k in the prototype). Each pool keeps a dict by URN
instead: see :func:`pooled_actor_refs`, :func:`get_pooled_by_urn`, :func:`stop_actors` and
:func:`stop_all_pooled`. One stand-in in ``ActorRegistry`` makes ``ActorRegistry.stop_all`` stop them too.
Workers are daemon threads (pooled actors do not keep the process alive); at interpreter exit a hook stops
the pooled actors the ``stop_all`` way (queued mail handled, then ``on_stop``) before non-daemon threads
are joined.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import logging
import queue
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Self, cast

import pykka
from pykka import ActorDeadError, ActorRegistry
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

from engine._pool import (
    BLOCKING_GET_MESSAGE,
    PooledInbox,
    PoolStats,
    ReplyFuture,
    WorkerPool,
    _all_pools,
    _send_stops,
    handle_envelope,
    stop_actors,
)

if TYPE_CHECKING:
    from types import TracebackType

    from pykka._actor import ActorInbox

__all__ = [
    "BLOCKING_GET_MESSAGE",
    "POOLED",
    "RUNTIMES",
    "THREADING",
    "PoolStats",
    "PooledActor",
    "ReplyFuture",
    "Runtime",
    "SingletonActor",
    "WorkerPool",
    "configure_pool",
    "default_pool",
    "get_pooled_by_urn",
    "mailbox_depth",
    "pool_stats",
    "pooled_actor_refs",
    "stop_actors",
    "stop_all_pooled",
]

# One worker by default: with the GIL only one thread runs Python at a time, so a second worker only adds
# GIL hand-offs and run-queue wake-ups. bench/bench_runtime.py on this 2-core machine, 3 runs: fan-out to
# 100k and back 0.47-0.55 s with 1 worker vs 0.47-0.52 s with 2 (a tie within noise), stopping 100k
# 0.72-0.81 s vs 0.86-1.58 s. More workers only help handlers that release the GIL for long, which the
# rules above forbid.
DEFAULT_WORKERS = 1
DEFAULT_MAX_MESSAGES_PER_TURN = 32

logger = logging.getLogger("engine.runtime")

_default_pool: WorkerPool | None = None
_default_pool_lock = threading.Lock()


def configure_pool(
    *, workers: int = DEFAULT_WORKERS, max_messages_per_turn: int = DEFAULT_MAX_MESSAGES_PER_TURN
) -> WorkerPool:
    """Set up the default pool. Call before the first pooled actor starts.

    Raises:
        RuntimeError: if the default pool's workers are already running.

    """
    global _default_pool
    with _default_pool_lock:
        if _default_pool is not None and _default_pool.started:
            msg = "configure_pool() must be called before the first PooledActor starts"
            raise RuntimeError(msg)
        if _default_pool is not None:
            _all_pools.remove(_default_pool)
        _default_pool = WorkerPool(workers=workers, max_messages_per_turn=max_messages_per_turn)
        return _default_pool


def default_pool() -> WorkerPool:
    """The module's default pool, created with default settings on first use."""
    with _default_pool_lock:
        pool = _default_pool
    return pool if pool is not None else configure_pool()


def pool_stats() -> PoolStats:
    """Workers, queued actors and mailbox depths (total, max) of the default pool."""
    return default_pool().stats()


def pooled_actor_refs() -> list[pykka.ActorRef[Any]]:
    """Every live pooled actor, of every pool (``ActorRegistry.get_all()`` does not list them)."""
    return [ref for pool in _all_pools.copy() for ref in pool.get_all()]


def get_pooled_by_urn(actor_urn: str) -> pykka.ActorRef[Any] | None:
    """The live pooled actor with this URN, or None. O(1) per pool."""
    for pool in _all_pools.copy():
        if (ref := pool.get_by_urn(actor_urn)) is not None:
            return ref
    return None


def stop_all_pooled(*, timeout_s: float = 30.0) -> None:
    """Stop every pooled actor of every pool, all at once, and wait. Call at shutdown."""
    stop_actors(pooled_actor_refs(), timeout_s=timeout_s)


def mailbox_depth(ref: pykka.ActorRef[Any]) -> int:
    """Messages waiting in an actor's mailbox; works for pooled and thread actors."""
    inbox = ref.actor_inbox
    if isinstance(inbox, PooledInbox):
        return inbox.depth()
    qsize = getattr(inbox, "qsize", None)  # ThreadingActor: queue.Queue
    return int(qsize()) if qsize is not None else 0


class _StopFlag:
    """``actor_stopped`` for pooled actors: a bool, plus a real Event only if someone waits on it.

    A ``threading.Event`` (Condition, lock, waiter deque) is ~1.2 KB; ×100k actors that is 120 MB
    for a flag that ActorRef checks on every tell and almost nobody waits on. Not an ``Event`` subclass
    either: with ``__slots__`` and no inherited ``__dict__`` it is 56 bytes instead of ~100.
    """

    __slots__ = ("_flag", "_waitable")

    def __init__(self) -> None:
        self._flag = False
        self._waitable: threading.Event | None = None

    def is_set(self) -> bool:
        return self._flag

    isSet = is_set  # threading.Event's legacy alias

    def set(self) -> None:
        self._flag = True
        if (waitable := self._waitable) is not None:
            waitable.set()

    def clear(self) -> None:
        msg = "an actor cannot be restarted"
        raise RuntimeError(msg)

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        with _waitable_lock:
            if self._waitable is None:
                self._waitable = threading.Event()
        # set() writes the flag before reading _waitable, so re-checking here closes the race.
        if self._flag:
            return True
        return self._waitable.wait(timeout)


_waitable_lock = threading.Lock()

# URNs: one random uuid4 prefix per process plus a 48-bit counter. Unique like uuid4 per actor, without a
# urandom syscall and a UUID object for each of 100k actors.
_urn_prefix = uuid.uuid4().urn[:-12]
_urn_numbers = itertools.count()


class SingletonActor(pykka.ThreadingActor):
    """A ``pykka.ThreadingActor`` for the engine's singletons (router, exchange, persistence), which receive one
    message per copy from the pooled workers.

    Its mailbox is a ``queue.SimpleQueue``: ``queue.Queue.put`` takes a Python-level Condition that the
    singleton's thread holds while it wakes up and waits for the GIL, so every sender convoys on it; SimpleQueue's
    put is C with no such lock (docs/benchmarks.md, scenario 1). pykka only calls ``put``/``get``/``empty``."""

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()

    _create_future = staticmethod(ReplyFuture)  # a pooled handler's get() on it raises instead of blocking

    def _actor_loop_running(self) -> None:
        # pykka 4.5's Actor._actor_loop_running, except that a reply that cannot be set fails only that
        # message (pykka's thread died of it, leaving an actor that looks alive and handles nothing). A
        # SystemExit/KeyboardInterrupt calls ActorRegistry.stop_all(), which also stops the pooled actors
        # (_PooledActorsInRegistry).
        inbox = self.actor_inbox
        stopped = self.actor_stopped
        while not stopped.is_set():
            envelope = inbox.get()
            try:
                handle_envelope(self, envelope)
            except BaseException:  # noqa: BLE001 - SystemExit etc.: pykka stops everything
                logger.debug("%r in %s. Stopping all actors.", sys.exc_info()[1], self)
                self._stop()
                ActorRegistry.stop_all()


class PooledActor(pykka.Actor):
    """A pykka actor run in turns on a shared :class:`WorkerPool` instead of its own thread.

    Use it like ``pykka.ThreadingActor``. ``__init__`` runs on the thread calling ``start()``;
    ``on_start``, ``on_receive``, proxied methods, ``on_stop`` and ``on_failure`` run on a
    ``pooled-worker-N`` thread, never two at once for one actor, but not always on the same thread.
    ``ask`` futures are :class:`ReplyFuture`, usable from any plain thread (``get()`` raises on a worker).

    Registry: started actors are kept in their pool's registry, not ``pykka.ActorRegistry``, so
    ``ActorRegistry.get_all()``/``get_by_class()`` do not list them; ``stop_all()`` stops them through one
    stand-in (see the module docs).

    Set the ``actor_pool`` class attribute to run a class on a pool other than the default one.
    """

    actor_pool: ClassVar[WorkerPool | None] = None
    _pooled_by: WorkerPool

    def __init__(self, *_args: Any, **_kwargs: Any) -> None:
        """Set up the actor's fields, as ``pykka.Actor.__init__`` does but with lighter parts.

        Subclasses must call ``super().__init__()``. Runs on the thread calling ``start()``.
        """
        # Mirrors pykka.Actor.__init__ (4.5): same fields, cheaper URN and stop flag (see above).
        self.actor_urn = f"{_urn_prefix}{next(_urn_numbers):012x}"
        self.actor_inbox = PooledInbox()
        self.actor_stopped = cast("threading.Event", _StopFlag())  # the part of Event that pykka uses
        self._actor_ref = pykka.ActorRef(self)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> pykka.ActorRef[Self]:
        """Create the actor and queue its first turn; returns at once (``on_start`` runs on a worker)."""
        obj = cls(*args, **kwargs)
        assert obj.actor_ref is not None, (
            "Actor.__init__() have not been called. Did you forget to call super() in your override?"
        )
        obj._start_actor_loop()
        return obj.actor_ref

    @staticmethod
    def _create_actor_inbox() -> ActorInbox:
        return PooledInbox()

    _create_future = staticmethod(ReplyFuture)  # its get() raises on a pool worker instead of blocking it

    def _start_actor_loop(self) -> None:
        if (in_registry := _in_registry) is None or in_registry.actor_stopped.is_set():
            _ensure_in_registry()
        self._pooled_by = self.actor_pool or default_pool()
        self._pooled_by.attach(self, cast("PooledInbox", self.actor_inbox))

    def _stop(self) -> None:
        self._pooled_by.detach(self.actor_urn)
        super()._stop()

    def _handle_failure(
        self,
        exception_type: type[BaseException] | None,
        exception_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._pooled_by.detach(self.actor_urn)
        super()._handle_failure(exception_type, exception_value, traceback)


class _PooledActorsInRegistry:
    """Stands for every pooled actor in ``pykka.ActorRegistry``, so that ``ActorRegistry.stop_all()`` stops
    them too.

    Pooled actors are not in pykka's registry (see engine/runtime.py), but pykka's answer to a
    ``SystemExit``/``KeyboardInterrupt`` in a thread actor's handler (a singleton's) is ``stop_all()``: without
    this, pooled actors went on running against dead singletons. Only its ``ActorRef`` is used: ``stop()``
    (what ``stop_all`` sends) sends a stop to every live pooled actor of every pool and is answered when they
    have all stopped, so ``stop_all(block=True)`` waits for them as for any actor and ``block=False`` does not.
    Anything else sent to it gets ``ActorDeadError``. Registered with the first pooled actor, again after it
    stopped (``WorkerPool.attach``).
    """

    _create_future = staticmethod(ReplyFuture)

    def __init__(self) -> None:
        self.actor_urn = f"urn:engine:pooled-actors:{uuid.uuid4()}"
        self.actor_inbox = self
        self.actor_stopped = threading.Event()
        self.actor_ref: pykka.ActorRef[Any] = pykka.ActorRef(self)  # type: ignore[arg-type]
        ActorRegistry.register(self.actor_ref)

    def __str__(self) -> str:
        return f"pooled actors ({self.actor_urn})"

    def put(self, envelope: Envelope[Any], /) -> None:
        """Stop all pooled actors on a stop; refuse anything else."""
        if not isinstance(envelope.message, _ActorStop):
            if envelope.reply_to is not None:
                error = ActorDeadError(f"{self} handles only stop")
                envelope.reply_to.set_exception(exc_info=(ActorDeadError, error, None))
            return
        self.actor_stopped.set()
        ActorRegistry.unregister(self.actor_ref)
        alive = [ref for ref in pooled_actor_refs() if ref.is_alive()]
        _send_stops(alive, then=envelope.reply_to)


_in_registry: _PooledActorsInRegistry | None = None
_in_registry_lock = threading.Lock()


def _ensure_in_registry() -> None:
    global _in_registry
    with _in_registry_lock:
        if _in_registry is None or _in_registry.actor_stopped.is_set():
            _in_registry = _PooledActorsInRegistry()


@dataclasses.dataclass(frozen=True, slots=True)
class Runtime:
    """An actor runtime, so the same tests and benchmarks run on thread actors and pooled actors."""

    name: str
    actor_class: type[pykka.Actor]

    def stop_all(self, *, timeout_s: float = 30.0) -> None:
        """Stop every live actor of this runtime, all at once, and wait."""
        if issubclass(self.actor_class, PooledActor):
            stop_all_pooled(timeout_s=timeout_s)
        else:
            stop_actors(pykka.ActorRegistry.get_by_class(self.actor_class), timeout_s=timeout_s)


THREADING = Runtime(name="threading", actor_class=pykka.ThreadingActor)
POOLED = Runtime(name="pooled", actor_class=PooledActor)
RUNTIMES = (THREADING, POOLED)


# ---- the cyclic garbage collector -------------------------------------------------------------------------


@contextlib.contextmanager
def long_lived_allocations() -> Iterator[None]:
    """Start-up builds millions of objects that live as long as the engine (100,000 followers' actors and
    books). The cyclic GC would walk the growing heap again and again while they are built (bench scenario 4:
    about half of starting the actors), so it is paused meanwhile; afterwards what exists is moved to the
    permanent generation (``gc.freeze``), so later collections on the hot path do not walk it either. The cost:
    a frozen object that later becomes cyclic garbage (a follower replaced after a failure) is not reclaimed,
    a few KB per restart. Garbage from before start is collected first so it is not frozen."""
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
        gc.freeze()


def tune_gc(*, gen0_threshold: int) -> None:
    """Collect the youngest generation every ``gen0_threshold`` allocations instead of Python's 700 (0 keeps
    Python's). A copy allocates a few dozen objects, so at 700 a 10,000-follower fan-out ran hundreds of
    collections, each walking the objects of the copies in flight (bench scenario 1: engine / plain loop 3.3x ->
    3.0x at N = 10,000). The older generations keep their ratios; young cyclic garbage lives a little longer."""
    if gen0_threshold > 0:
        _, gen1, gen2 = gc.get_threshold()
        gc.set_threshold(gen0_threshold, gen1, gen2)
