"""The copies followers hold: a whale exit that reached a follower while its entry on that symbol was still at
the venue waits there for the entry's outcome (``actors/follower.py``), and the follower tells the router so
(``CopyHeld``) before it answers. The router's stale sweep does not count a held copy ``no_answer`` (the signal
waits for its answer) for up to ``SweepStale.held_timeout_s``; a follower that restarts (or goes) loses what it
held, so its holds are forgotten and the sweep counts those copies ``no_answer`` as before. Router-thread only.
"""

from __future__ import annotations

__all__ = ["HeldCopies"]


class HeldCopies:
    """Signal id -> user id -> when the hold was told (monotonic ns)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[int, dict[int, int]] = {}

    def hold(self, signal_id: int, user_id: int, now_ns: int) -> None:
        self._held.setdefault(signal_id, {})[user_id] = now_ns

    def release(self, signal_id: int, user_id: int) -> None:
        """The follower answered that copy (or it is given up)."""
        held = self._held.get(signal_id)
        if held is not None and held.pop(user_id, None) is not None and not held:
            del self._held[signal_id]

    def forget_user(self, user_id: int) -> None:
        for signal_id in [sid for sid, held in self._held.items() if user_id in held]:
            self.release(signal_id, user_id)

    def live(self, signal_id: int, held_cutoff_ns: int) -> int:
        """How many copies of ``signal_id`` are held since ``held_cutoff_ns``; older holds are given up (the
        sweep counts those copies ``no_answer``, and a late answer is ignored as any late answer is)."""
        held = self._held.get(signal_id)
        if not held:
            return 0
        for user_id in [uid for uid, since in held.items() if since < held_cutoff_ns]:
            self.release(signal_id, user_id)
        return len(held)
