"""The follows watcher (``node/services.py``): follow changes written by another application reach the running
engine even when a notification comes at an awkward moment, is never sent, or is lost with the connection.

Rows written with ``session_replication_role = replica`` fire no trigger: no NOTIFY, no ``updated_at`` touch.
That is how a replicated or bulk-loaded ``users`` table looks to the engine, and it lets a test decide exactly
which notification the watcher gets and when.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adapters.paper import PaperVenue
from tests.kit import HeldConnection, execute, fetchval, running_engine, seed_followers, seed_whale, wait_for

# Polling far slower than every wait below: only what each test sets up can make it pass.
# Any: mypy lets a ** of dict[str, str] bind running_engine's venues.
SLOW_POLL: dict[str, Any] = {"ENGINE_SIGNALS__FOLLOWS_POLL_INTERVAL_MS": "600000"}


def _insert_silently(dsn: str, *, user_id: int, whale_id: int, age_s: float) -> None:
    """A user following ``whale_id``, committed without a notification, ``updated_at`` ``age_s`` in the past."""
    with HeldConnection(dsn) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute(
            "INSERT INTO users (id, name, updated_at) VALUES ($1, $2, now() - make_interval(secs => $3))",
            user_id,
            f"user-{user_id}",
            age_s,
        )
        conn.execute(
            """INSERT INTO user_whale_follows (user_id, whale_id, updated_at)
               VALUES ($1, $2, now() - make_interval(secs => $3))""",
            user_id,
            whale_id,
            age_s,
        )


def _follows(system, whale_id: int) -> list[int]:  # type: ignore[no-untyped-def]
    followers: list[int] = system.router.proxy().followers_of(whale_id).get(timeout=10)
    return followers


def test_notification_during_a_poll_is_kept_for_the_next_round(pg_dsn: str, tmp_path: Path) -> None:
    seed_whale(pg_dsn, 9301)
    with running_engine(pg_dsn, tmp_path, venue=PaperVenue(), **SLOW_POLL) as system:
        # An hour old: no poll finds this user; only its notification can.
        _insert_silently(pg_dsn, user_id=930_102, whale_id=9301, age_s=3600)
        with HeldConnection(pg_dsn) as lock:
            lock.execute("BEGIN")
            lock.execute("LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
            execute(pg_dsn, "SELECT pg_notify('follows_changed', '930101')")  # wakes the watcher: it polls
            wait_for(
                lambda: fetchval(
                    pg_dsn,
                    """SELECT count(*) FROM pg_stat_activity
                       WHERE wait_event_type = 'Lock' AND query LIKE '%user_whale_follows WHERE updated_at%'""",
                ),
                30,
            )
            # The poll is stuck behind the lock: this notification arrives while it is in flight.
            watcher = system.follows_watcher
            assert watcher is not None
            received = watcher.notifications_received
            execute(pg_dsn, "SELECT pg_notify('follows_changed', '930102')")
            wait_for(lambda: watcher.notifications_received > received, 30)  # delivered to the watcher
            lock.execute("COMMIT")
        wait_for(lambda: 930_102 in _follows(system, 9301), 30)
        assert 930_102 in system.follower_refs()


def test_row_committed_with_an_older_timestamp_is_found_by_the_poll(pg_dsn: str, tmp_path: Path) -> None:
    seed_whale(pg_dsn, 9302)
    with running_engine(pg_dsn, tmp_path, venue=PaperVenue(), **SLOW_POLL) as system:
        # Older than the watcher's last poll (taken at start-up), as a long writer transaction leaves it;
        # no notification: the poll's overlap has to find it.
        _insert_silently(pg_dsn, user_id=930_201, whale_id=9302, age_s=20)
        execute(pg_dsn, "SELECT pg_notify('follows_changed', '0')")  # a poll now, not in 10 minutes
        wait_for(lambda: 930_201 in _follows(system, 9302), 30)


def test_lost_listen_connection_reloads_every_follower(pg_dsn: str, tmp_path: Path) -> None:
    seed_whale(pg_dsn, 9303)
    seed_followers(pg_dsn, whale_id=9303, user_ids=[930_301, 930_302])
    with running_engine(pg_dsn, tmp_path, venue=PaperVenue(), **SLOW_POLL) as system:
        assert sorted(_follows(system, 9303)) == [930_301, 930_302]
        # Unfollowed while the engine is not listening: a delete leaves no row for any poll to find.
        with HeldConnection(pg_dsn) as conn:
            conn.execute("SET session_replication_role = replica")
            conn.execute("DELETE FROM user_whale_follows WHERE user_id = 930301 AND whale_id = 9303")
        killed = fetchval(
            pg_dsn,
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE query LIKE 'LISTEN%follows_changed%'""",
        )
        assert killed == 1
        wait_for(lambda: _follows(system, 9303) == [930_302], 30)
        # Listening again: a follow after the reconnect is notified as before (the poll is 10 minutes away).
        seed_followers(pg_dsn, whale_id=9303, user_ids=[930_301])
        wait_for(lambda: sorted(_follows(system, 9303)) == [930_301, 930_302], 30)
