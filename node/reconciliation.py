"""Which followers have orders of unknown outcome, and the rounds that tell them to ask their venues again.

Followers report an unknown outcome (``needs_reconcile``, on their worker threads); the reconcile timer and the
admin ``reconcile`` start a round (``reconcile``, blocking: not for actor handlers).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Mapping

import pykka

from actors.follower import FollowerActor
from engine.control import ReconcileNow
from engine.logs import get_logger

__all__ = ["Reconciliation"]

log = get_logger(__name__)


class Reconciliation:
    """``follower_refs`` asks the router (the refs' owner) for every follower's ref."""

    def __init__(self, follower_refs: Callable[[], Mapping[int, pykka.ActorRef[FollowerActor]]]) -> None:
        self._follower_refs = follower_refs
        self._needed: set[int] = set()
        self._lock = threading.Lock()
        self._pending_logged = False

    def needs_reconcile(self, user_id: int) -> None:
        """A follower has orders whose outcome is unknown. Logged once when the engine goes from none to some
        (not per order): ``reconciliation.needed``; the stats line counts the unknowns."""
        with self._lock:
            first = not self._needed and not self._pending_logged
            self._needed.add(user_id)
            if first:
                self._pending_logged = True
        if first:
            log.warning("reconciliation.needed", user_id=user_id)

    def reconcile(self, *, all_followers: bool = False) -> int:
        """Tell followers with unknown outcomes (or all) to ask their venues again. Returns how many."""
        refs = self._follower_refs()
        with self._lock:
            targets = set(refs) if all_followers else set(self._needed)
            self._needed.clear()
            # A follower still unknown after this round asks again (and is logged again only after a clean round).
            self._pending_logged = bool(targets)
        for user_id in targets:
            ref = refs.get(user_id)
            if ref is not None:
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.tell(ReconcileNow())
        return len(targets)
