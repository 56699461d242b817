"""Mailbox and worker pool behind :class:`engine.runtime.PooledActor`.

Private: import the public names from :mod:`engine.runtime`. This module drives pykka internals
(``Actor._actor_loop_setup``, ``_handle_receive``, ``_handle_failure``, ``_actor_loop_teardown``,
``_stop``); pyproject pins pykka to the 4.5 minor for that reason.
"""

from __future__ import annotations

import atexit
import collections
import itertools
import logging
import queue
import sys
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

import pykka
from pykka import ActorDeadError, ActorRegistry, ThreadingFuture
from pykka._envelope import Envelope
from pykka.messages import _ActorStop

if TYPE_CHECKING:
    from pykka._types import OptExcInfo

logger = logging.getLogger("engine.runtime")

_worker_numbers = itertools.count(1)
_mailbox_creation = threading.Lock()

#: How long interpreter exit waits for pooled actors to handle their queued mail and run ``on_stop``.
EXIT_STOP_TIMEOUT_S = 30.0

BLOCKING_GET_MESSAGE = "blocking get() inside a pooled actor handler: reply with a message instead"


class _WorkerLocal(threading.local):
    """Per thread: whether it is a pool worker (the class attribute is the default of every other thread)."""

    pooled = False


_on_worker = _WorkerLocal()


class ReplyFuture(ThreadingFuture[Any]):
    """The future of an ``ask`` to a pooled or singleton actor: a ``pykka.ThreadingFuture`` whose ``get()``
    refuses to block a pool worker.

    A pooled handler that waits on a future holds a shared worker; enough of them (one, with one worker) and
    every pooled actor stalls, the awaited one too if it is pooled: deadlock. So it raises at once, before
    waiting, whether or not the value is there yet (an error that depended on timing would be worse). Plain
    threads (the composition root, the admin socket, singletons, tests) block as pykka's do. The check is one
    thread-local read per ``get()``, nothing per message.
    """

    __slots__ = ()

    def get(self, *, timeout: float | None = None) -> Any:
        """Wait for the value, as ``ThreadingFuture.get``.

        Raises:
            RuntimeError: on a pool worker thread (a pooled actor's handler), instead of blocking it.

        """
        if _on_worker.pooled:
            raise RuntimeError(BLOCKING_GET_MESSAGE)
        return super().get(timeout=timeout)


class PoolStats(NamedTuple):
    """A snapshot of one worker pool, for the admin ``status`` command."""

    workers: int
    queued_actors: int  # actors waiting in the run queue for a turn
    actors: int  # live actors attached to the pool
    mailbox_depth_total: int
    mailbox_depth_max: int


def _not_started(_inbox: PooledInbox) -> None:  # pragma: no cover - guarded by the held token
    msg = "actor not started"
    raise RuntimeError(msg)


class PooledInbox:
    """An actor's mailbox: a deque plus a scheduling token.

    The token is a plain lock meaning "this actor is in the run queue or in a turn". Whoever acquires it
    (a ``put`` on an idle actor, or the worker ending a turn that finds late mail) enqueues the actor;
    only the worker that ran the turn releases it. So at most one turn runs at a time, and a ``put`` racing
    with the end of a turn is never lost: the worker re-checks the deque *after* releasing the token.

    The deque is created by the first ``put``: an empty deque is ~600 bytes (a 64-slot block), and most of
    100,000 followers sit idle (bench scenario 4). Once created it stays, so a ``put`` never appends to a
    deque the worker has dropped.
    """

    __slots__ = ("_actor", "_dead_name", "_needs_setup", "_queue", "_schedule", "_token")

    def __init__(self) -> None:
        self._queue: collections.deque[Envelope[Any]] | None = None
        self._token = threading.Lock()
        # Held until the actor is started, so mail sent from __init__ waits for the first turn.
        self._token.acquire()
        self._actor: pykka.Actor | None = None
        self._dead_name = ""  # set when the stopped actor is let go: who the late mail was for
        self._needs_setup = True
        self._schedule: Callable[[PooledInbox], None] = _not_started

    # -- pykka's ActorInbox protocol -------------------------------------------------------------------

    def put(self, envelope: Envelope[Any], /) -> None:
        """Append a message; schedule the actor if it was idle. Runs on the sender's thread."""
        mailbox = self._queue
        if mailbox is None:
            mailbox = self._first_mailbox()
        mailbox.append(envelope)
        if self._token.acquire(False):
            self._schedule(self)

    def _first_mailbox(self) -> collections.deque[Envelope[Any]]:
        with _mailbox_creation:  # two first senders at once must share one deque
            if self._queue is None:
                self._queue = collections.deque()
            return self._queue

    def get(self) -> Envelope[Any]:
        """Pop the oldest message without blocking (pykka's teardown calls it after ``empty()``)."""
        assert self._queue is not None
        return self._queue.popleft()

    def empty(self) -> bool:
        """Whether the mailbox is empty."""
        return not self._queue

    def depth(self) -> int:
        """Messages waiting in the mailbox (not counting the one being handled)."""
        return len(self._queue) if self._queue is not None else 0

    # -- worker side -----------------------------------------------------------------------------------

    def bind(self, actor: pykka.Actor, schedule: Callable[[PooledInbox], None]) -> None:
        """Attach the started actor and queue its first turn (which runs ``on_start``)."""
        self._actor = actor
        self._schedule = schedule
        schedule(self)  # we hold the token since __init__

    def run_turn(self, budget: int) -> None:
        """Handle up to ``budget`` messages, then release or re-queue. Runs on a pool worker."""
        actor = self._actor
        if actor is None:  # stopped and let go: mail that raced the stop is answered as pykka's teardown does
            self._answer_dead()
            self._end_turn()
            return
        stopped = actor.actor_stopped
        mailbox = self._queue  # None until the first put; one created during this turn is seen by _end_turn
        try:
            if self._needs_setup:
                self._needs_setup = False
                actor._actor_loop_setup()
            # Same per-message semantics as pykka's Actor._actor_loop_running, one message at a time, except
            # that a failing reply fails only that message (pykka's thread would die of it; see _reply_failed).
            while budget and mailbox and not stopped.is_set():
                budget -= 1
                handle_envelope(actor, mailbox.popleft())
            if stopped.is_set():
                # Also drains mail that arrived after the stop: those asks get ActorDeadError
                # instead of hanging (pykka's thread is gone by then and would never answer).
                actor._actor_loop_teardown()
                self._let_go(actor)
        except BaseException:  # noqa: BLE001 - SystemExit etc. from a handler: pykka stops everything
            logger.debug("%r in %s. Stopping all actors.", sys.exc_info()[1], actor)
            actor._stop()
            actor._actor_loop_teardown()
            self._let_go(actor)
            _stop_everything_without_waiting()
        finally:
            self._end_turn()

    def _let_go(self, actor: pykka.Actor) -> None:
        # The ActorRef holds this inbox; without this, a stopped actor's whole state lived as long as any
        # reference to it (for good once gc.freeze() had frozen it). Late mail is answered by _answer_dead.
        self._dead_name = str(actor.actor_ref)
        self._actor = None

    def _answer_dead(self) -> None:
        mailbox = self._queue
        while mailbox:
            envelope = mailbox.popleft()
            if (reply_to := envelope.reply_to) is None:
                continue
            if isinstance(envelope.message, _ActorStop):
                reply_to.set(None)
            else:
                error = ActorDeadError(f"{self._dead_name} stopped before handling the message")
                reply_to.set_exception(exc_info=(ActorDeadError, error, None))

    def _end_turn(self) -> None:
        if self._queue:
            self._schedule(self)  # keep the token; go to the back of the run queue (fairness)
            return
        self._token.release()
        # A put may have appended after our check but failed to take the token: take it for it.
        if self._queue and self._token.acquire(False):
            self._schedule(self)


def handle_envelope(actor: pykka.Actor, envelope: Envelope[Any]) -> None:
    """One message, as pykka's ``Actor._actor_loop_running`` handles it, except that a failing reply fails only
    that message (pykka's thread would die of it; see :func:`_reply_failed`). A ``BaseException`` (SystemExit
    etc.) is the caller's to handle: the pooled turn and the singleton loop stop differently. Shared by both."""
    try:
        response = actor._handle_receive(envelope.message)
    except Exception:
        if (reply_to := envelope.reply_to) is not None:
            logger.info("Exception returned from %s to caller:", actor, exc_info=True)
            try:
                reply_to.set_exception()
            except Exception:  # noqa: BLE001 - the reply's own failure is that message's only
                _reply_failed(actor, reply_to)
        else:
            _fail_on_tell(actor, sys.exc_info())
    else:
        if (reply_to := envelope.reply_to) is not None:
            try:
                reply_to.set(response)
            except Exception:  # noqa: BLE001 - the reply's own failure is that message's only
                _reply_failed(actor, reply_to)


def _reply_failed(actor: pykka.Actor, reply_to: pykka.Future[Any]) -> None:
    # Setting the reply raised (a future completed by someone else, a reply hook that raises): that message
    # fails, its future gets the error if it still can, and the actor goes on with its next message.
    logger.error("Reply from %s failed; the actor goes on:", actor, exc_info=True)
    try:
        reply_to.set_exception()
    except Exception:  # it cannot be told; the error is logged above
        logger.debug("The failed reply from %s could not be set either", actor, exc_info=True)


def _fail_on_tell(actor: pykka.Actor, exc_info: OptExcInfo) -> None:
    # pykka: an exception from a tell'd message is unhandled → log, stop, then on_failure.
    actor._handle_failure(*exc_info)
    try:
        actor.on_failure(*exc_info)
    except Exception:  # noqa: BLE001 - a boundary: whatever failed is reported, never raised through
        actor._handle_failure(*sys.exc_info())


class _StopLatch(pykka.Future[Any]):
    """One reply target shared by many stop envelopes: counts replies down to zero.

    Not a real future (it is "set" many times); it only lives inside :func:`stop_actors`. Using it
    instead of one ThreadingFuture (Condition + RLock) per actor keeps 100k stops cheap.
    """

    def __init__(self, count: int, then: pykka.Future[Any] | None = None) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._remaining = count
        self._then = then  # answered (None) when the count reaches zero
        self.done = threading.Event()
        if count == 0:
            self._finish()

    def set(self, value: Any | None = None) -> None:
        with self._lock:
            self._remaining -= 1
            if self._remaining == 0:
                self._finish()

    def _finish(self) -> None:
        self.done.set()
        if self._then is not None:
            self._then.set(None)

    def set_exception(self, exc_info: OptExcInfo | None = None) -> None:
        self.set()


def stop_actors(refs: Iterable[pykka.ActorRef[Any]], *, timeout_s: float = 30.0) -> None:
    """Ask every actor in ``refs`` to stop, then wait until all have stopped.

    Stops are sent to all actors first (no per-actor round trip), so 100k pooled actors stop in
    seconds. Works for any pykka actor; already-dead actors are skipped. Each actor handles the mail it
    had before the stop, runs ``on_stop``, and answers later asks with ``ActorDeadError``.

    Raises:
        pykka.Timeout: if some actors are still alive after ``timeout_s``.

    """
    alive = [ref for ref in refs if ref.is_alive()]
    latch = _send_stops(alive)
    if latch.done.wait(timeout_s):
        return
    # A ThreadingActor that died between the check and the put never answers: judge by liveness.
    still_alive = sum(1 for ref in alive if ref.is_alive())
    if still_alive:
        msg = f"{still_alive} of {len(alive)} actors still alive after {timeout_s} s"
        raise pykka.Timeout(msg)


def _send_stops(alive: list[pykka.ActorRef[Any]], then: pykka.Future[Any] | None = None) -> _StopLatch:
    latch = _StopLatch(len(alive), then)
    for ref in alive:
        try:
            ref.actor_inbox.put(Envelope(_ActorStop(), reply_to=latch))
        except Exception:  # a full/broken inbox must not block the others' stop
            logger.exception("could not send stop to %s", ref)
            latch.set()
    return latch


class WorkerPool:
    """A run queue of actors with mail, served by ``workers`` daemon threads named ``pooled-worker-N``.

    Threads start on the first attached actor. Also the registry of its live actors (a dict by URN).
    """

    def __init__(self, *, workers: int, max_messages_per_turn: int) -> None:
        if workers < 1 or max_messages_per_turn < 1:
            msg = f"workers and max_messages_per_turn must be >= 1, got {workers}, {max_messages_per_turn}"
            raise ValueError(msg)
        self.workers = workers
        self.max_messages_per_turn = max_messages_per_turn
        self._run_queue: queue.SimpleQueue[PooledInbox | None] = queue.SimpleQueue()
        self._actors: dict[str, pykka.ActorRef[Any]] = {}
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        _all_pools.append(self)

    @property
    def started(self) -> bool:
        """Whether the worker threads are running."""
        return bool(self._threads)

    def attach(self, actor: pykka.Actor, inbox: PooledInbox) -> None:
        """Register a new actor and queue its first turn. Runs on the thread calling ``start()``."""
        with self._lock:
            if not self._threads:
                self._start_workers()
            self._actors[actor.actor_urn] = actor.actor_ref
        inbox.bind(actor, self._run_queue.put)

    def detach(self, actor_urn: str) -> None:
        """Forget a stopping actor. Runs on a worker, inside the actor's last turn."""
        with self._lock:
            self._actors.pop(actor_urn, None)

    def get_by_urn(self, actor_urn: str) -> pykka.ActorRef[Any] | None:
        """The live actor with this URN, in O(1)."""
        with self._lock:
            return self._actors.get(actor_urn)

    def get_all(self) -> list[pykka.ActorRef[Any]]:
        """All live actors of this pool, in start order."""
        with self._lock:
            return list(self._actors.values())

    def stats(self) -> PoolStats:
        """Workers, run-queue length and mailbox depths; O(actors), fine for an admin command."""
        refs = self.get_all()
        depths = [ref.actor_inbox.depth() for ref in refs]  # type: ignore[attr-defined]
        return PoolStats(
            workers=self.workers,
            queued_actors=self._run_queue.qsize(),
            actors=len(refs),
            mailbox_depth_total=sum(depths),
            mailbox_depth_max=max(depths, default=0),
        )

    def stop_all(self, *, timeout_s: float = 30.0) -> None:
        """Stop every live actor of this pool (see :func:`stop_actors`)."""
        stop_actors(self.get_all(), timeout_s=timeout_s)

    def shutdown(self, *, timeout_s: float = 30.0) -> None:
        """Stop all actors, then the worker threads. The pool can't be used afterwards."""
        self.stop_all(timeout_s=timeout_s)
        with self._lock:
            threads, self._threads = self._threads, []
        for _ in threads:
            self._run_queue.put(None)
        for thread in threads:
            thread.join(timeout_s)

    def _start_workers(self) -> None:
        for _ in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"pooled-worker-{next(_worker_numbers)}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def _work(self) -> None:
        _on_worker.pooled = True
        get = self._run_queue.get
        budget = self.max_messages_per_turn
        while (inbox := get()) is not None:
            try:
                inbox.run_turn(budget)
            except BaseException:  # a worker must survive anything, or every actor on it stalls
                logger.exception("pooled worker: unexpected error in a turn")


# Every pool created, so a BaseException in one handler can stop everything, as pykka does.
_all_pools: list[WorkerPool] = []


def _stop_everything_without_waiting() -> None:
    # Not blocking: we are on a worker, and waiting for pooled actors here could deadlock the pool. The
    # registry holds a stand-in for the pooled actors (engine.runtime._PooledActorsInRegistry, registered by
    # every PooledActor.start), so this stops the pooled actors as well as the thread actors.
    ActorRegistry.stop_all(block=False)


def _stop_pooled_at_exit() -> None:
    # Workers are daemon threads: without this, the interpreter's exit dropped queued mail and on_stop. Runs
    # before the interpreter joins its non-daemon threads, so the singletons (thread actors) are still there
    # to receive what the pooled actors send while they finish. The stop_all semantics: each pooled actor
    # handles the mail queued before the stop, then runs on_stop.
    alive = [ref for pool in _all_pools.copy() for ref in pool.get_all() if ref.is_alive()]
    if not alive:
        return
    if not _send_stops(alive).done.wait(EXIT_STOP_TIMEOUT_S):
        logger.error("%d pooled actors still running %s s into interpreter exit", len(alive), EXIT_STOP_TIMEOUT_S)


# threading's own exit hooks run before non-daemon threads are joined (atexit's only after them).
getattr(threading, "_register_atexit", atexit.register)(_stop_pooled_at_exit)
