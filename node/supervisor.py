"""Supervisor of the follower actors: starts them, restarts one that failed, applies follow changes.

A follower whose handler raises is stopped by the runtime (pykka semantics) and reports here through
``FollowerContext.on_failure``. The supervisor waits for the persistence actor's batched lane to write what the
follower had already sent, reloads that user from PostgreSQL and starts a fresh actor; other followers are
untouched. Orders that were in flight are reconciled by the new actor on start (they are in the database as
PENDING / SUBMITTED / UNKNOWN). A follower that keeps failing (``max_restarts`` within ``window_s``) is left
stopped, with an error log, rather than crash-looping.

The supervisor keeps no refs: it tells the router (their one owner) each start (``SetFollowers``,
``UpdateFollower``), restart (``UpdateFollower``) and removal (``RemoveFollower``), and asks it when it needs them.

Runs its slow parts on the I/O loop; never inside an actor handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable

import asyncpg
import pykka

from actors.follower import FollowerActor
from actors.router import SignalRouterActor
from adapters.ioloop import IoLoop
from adapters.state_loader import load_followers, load_whale_ids
from engine import metrics
from engine.clock import Clock
from engine.control import RemoveFollower, SetFollowers, SetKnownWhales, UpdateFollower, UpdateSettings
from engine.follower_state import FollowerContext, FollowerState
from engine.logs import get_logger

log = get_logger(__name__)

_ASK_TIMEOUT_S = 30.0


class Supervisor:
    """Follower lifecycle. Thread-safe: failures are reported from pool workers."""

    def __init__(
        self,
        *,
        io: IoLoop,
        pool: asyncpg.Pool,
        router: pykka.ActorRef[SignalRouterActor],
        context: FollowerContext,
        prepare: Callable[[FollowerState], FollowerState],
        clock: Clock,
        restart_delay_s: float,
        max_restarts: int = 5,
        window_s: float = 60.0,
    ) -> None:
        """``context``: what every follower is started with; ``prepare``: a state made ready for its venue
        (paper funding, credential registered) without I/O; ``restart_delay_s``: the wait before reloading a
        failed follower, so the batched lane has written what it had sent."""
        self._io = io
        self._pool = pool
        self._router = router
        self._context = context
        self._prepare = prepare
        self._clock = clock
        self._restart_delay_s = restart_delay_s
        self._max_restarts = max_restarts
        self._window_s = window_s
        self._restarts: dict[int, deque[float]] = {}
        self._lock = threading.Lock()

    def start_followers(self, states: list[FollowerState], known_whales: frozenset[int]) -> int:
        """Start a follower per state and hand the router their refs (it owns them). Returns how many."""
        refs = {s.user.user_id: FollowerActor.start(s, self._context) for s in states}
        follows = {s.user.user_id: tuple(f.whale_id for f in s.follows) for s in states}
        self._router.tell(SetFollowers(refs=refs, follows=follows, known_whales=known_whales))
        return len(refs)

    # ---- failures ----------------------------------------------------------------------------------------

    def on_failure(self, user_id: int, message: str, error: str) -> None:
        metrics.incr("followers.failed")
        now = self._clock.monotonic()
        with self._lock:
            history = self._restarts.setdefault(user_id, deque())
            while history and now - history[0] > self._window_s:
                history.popleft()
            give_up = len(history) >= self._max_restarts
            if not give_up:
                history.append(now)
        if give_up:
            log.error("follower.gave_up", user_id=user_id, message_type=message, error=error, restarts=len(history))
            return
        log.error("follower.failed", user_id=user_id, message_type=message, error=error)
        self._io.submit(self._restart(user_id))

    async def _restart(self, user_id: int) -> None:
        # Let the batched lane write what the failed actor had already sent, so we reload its latest books.
        await asyncio.sleep(self._restart_delay_s)
        try:
            states = await load_followers(self._pool, [user_id])
        except Exception as exc:  # noqa: BLE001 - retry once the database is back
            log.warning("follower.restart_deferred", user_id=user_id, error=repr(exc))
            await asyncio.sleep(1.0)
            self._io.submit(self._restart(user_id))
            return
        if not states:
            return
        state = self._prepare(states[0])
        ref = FollowerActor.start(state, self._context)
        self._router.tell(UpdateFollower(user_id=user_id, ref=ref, whale_ids=tuple(f.whale_id for f in state.follows)))
        metrics.incr("followers.restarted")
        log.info("follower.restarted", user_id=user_id, open_orders=len(state.open_trades))

    # ---- follow changes ------------------------------------------------------------------------------------

    async def reload(self, user_ids: list[int] | None = None) -> dict[str, int]:
        """Apply users / follows as they are in the database now (NOTIFY, polling or admin ``reload``)."""
        skipped: set[int] = set()  # users with a row that cannot be decoded: keep what runs, do not stop it
        states = await load_followers(self._pool, user_ids, skipped=skipped)
        refs = await self._follower_refs()
        seen = {s.user.user_id for s in states} | skipped
        added = updated = removed = 0
        for state in states:
            uid = state.user.user_id
            whale_ids = tuple(f.whale_id for f in state.follows)
            current = refs.get(uid)
            if current is not None and current.is_alive():
                current.tell(UpdateSettings(state=state))
                updated += 1
                ref = current
            else:
                ref = FollowerActor.start(self._prepare(state), self._context)
                added += 1
            self._router.tell(UpdateFollower(user_id=uid, ref=ref, whale_ids=whale_ids))
        asked = set(user_ids) if user_ids is not None else set(refs)
        for uid in asked - seen:  # deleted users: stop copying for them
            gone = refs.get(uid)
            if gone is not None:
                self._router.tell(RemoveFollower(user_id=uid))
                with contextlib.suppress(pykka.ActorDeadError):
                    gone.stop(block=False)
                removed += 1
        self._router.tell(SetKnownWhales(whale_ids=await load_whale_ids(self._pool)))
        log.info("follows.reloaded", added=added, updated=updated, removed=removed)
        return {"added": added, "updated": updated, "removed": removed}

    async def _follower_refs(self) -> dict[int, pykka.ActorRef[FollowerActor]]:
        """The router's refs (their owner), asked off the loop: the ask blocks."""
        router = self._router
        return await asyncio.get_running_loop().run_in_executor(
            None, lambda: router.proxy().follower_refs().get(timeout=_ASK_TIMEOUT_S)
        )
