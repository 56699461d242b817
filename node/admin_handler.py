"""EngineAdminHandler: runs admin socket commands (``engine/admin_commands.py``) on the parts of the engine they
use (the router, the persistence actor, the pool, the venues, the supervisor's reload, the stop controls).

Runs on the I/O loop (``AdminServer`` awaits ``handle``), so nothing here blocks the loop: asks to actors
(pykka futures) and the engine's blocking helpers run in the loop's default executor (``_blocking``). The
read-only commands are in the base class, ``node.admin_queries.AdminQueries``. The one write, an injected
signal, goes through the persistence actor (``run_write``), the only writer to PostgreSQL.

An injected signal's reply says what is durable. It is stored 'pending' and the intake claims and routes it, as
a detector's row (with ``signals.listen`` off, the handler claims it by id and routes it). ``external_id`` makes
it idempotent: a retry gets the stored row's id back (``already_existed``). When the INSERT's answer is lost
(the connection dropped, maybe after the COMMIT reached the server), the row is looked up by ``external_id``
before answering: found, the reply has its id; not found, the error says nothing was stored and a retry with the
same ``external_id`` is safe; the lookup failing too, the error says so (a retry is safe either way).

Operator pauses (``pause`` / ``resume``) live in memory and end with the process:

* ``user ID``: that follower gets ``SetPaused(paused=True)``; resume clears the override (``paused=None``),
  so the user's own ``users.paused`` applies again;
* ``all``: every follower gets the same override; ``resume all`` lifts it except for users paused one by one;
* ``whale ID``: the router skips that whale's signals for every follower (reason ``paused``);
* ``exchange NAME``: the venue takes no new entries (followers skip with ``venue_unavailable``); exits,
  SL/TP and closes still run.

A follower started later (``reload``, a restart after a failure) gets the ``all`` / ``user`` overrides on the
next ``pause``, ``resume`` or admin ``reload``.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

import asyncpg
import msgspec
import pykka

from actors.persistence import PersistenceActor
from actors.router import SignalRouterActor
from adapters.signal_intake import INSERT_SQL
from engine import logs
from engine.admin_commands import (
    Close,
    CloseAll,
    Command,
    CommandError,
    Drain,
    DryRun,
    InjectSignal,
    Pause,
    Peer,
    Positions,
    Reconcile,
    Reload,
    Resume,
    SetLogLevel,
    SetPrice,
    Shutdown,
    Stats,
    Status,
    Trades,
    User,
    Users,
)
from engine.clock import Clock
from engine.control import RouteSignal, SetPaused, SetWhalePaused
from engine.logs import get_logger
from engine.messages import Signal, TradeType
from engine.signals import SignalRejected, parse_signal
from node.admin_queries import AdminQueries, OperatorPauses, position_owner
from node.persistence_writes import WriteNotStarted, run_write
from node.price_feed import PriceFeed
from node.venues import Venue

__all__ = ["DRY_RUN_LIST_LIMIT", "EngineAdminHandler", "OperatorPauses"]

log = get_logger(__name__)

DRY_RUN_LIST_LIMIT = 1000  # per-follower answers listed in a dry-run reply (the counts cover everyone)

STORED_SIGNAL_SQL = "SELECT id, status, whale_id, symbol, side, action FROM whale_signals WHERE external_id = $1"

# With no intake (``signals.listen`` off) the handler claims its own signal, as the intake would.
CLAIM_ONE_SQL = """
UPDATE whale_signals SET status = 'processing', claimed_at = now(), updated_at = now(), version = version + 1
WHERE id = $1 AND status = 'pending'
RETURNING id
"""


class EngineAdminHandler(AdminQueries):
    """Implements ``adapters.admin_socket.AdminHandler`` for the engine. ``pauses`` holds what the operator
    paused."""

    def __init__(
        self,
        *,
        pool: asyncpg.Pool,
        router: pykka.ActorRef[SignalRouterActor],
        persistence: pykka.ActorRef[PersistenceActor],
        venues: Mapping[str, Venue],
        clock: Clock,
        started_at: float,
        shutdown: threading.Event,
        max_signal_age_s: float,
        mark_price: Callable[[str, TradeType], Decimal | None],
        price_feeds: Sequence[PriceFeed],
        reload: Callable[[], Awaitable[Mapping[str, int]]],
        reconcile_all: Callable[[], int],
        set_draining: Callable[[bool], None],
        intake_claims: bool,
    ) -> None:
        """Besides what the queries take (``AdminQueries``): ``max_signal_age_s`` for injected signals,
        ``mark_price`` for dry runs, the ``price_feeds`` a ``price`` pokes, the supervisor's ``reload``, and the
        engine's ``reconcile_all`` and ``set_draining`` (both block: run in the executor); ``intake_claims``:
        the signal intake runs and routes what is stored 'pending' (else the handler routes what it injects)."""
        super().__init__(
            pool=pool,
            router=router,
            persistence=persistence,
            venues=venues,
            clock=clock,
            started_at=started_at,
            shutdown=shutdown,
        )
        self._max_signal_age_s = max_signal_age_s
        self._mark_price = mark_price
        self._price_feeds = price_feeds
        self._reload_follows = reload
        self._reconcile_all = reconcile_all
        self._set_draining = set_draining
        self._intake_claims = intake_claims

    async def handle(self, cmd: Command, peer: Peer) -> dict[str, Any]:
        """Run one command (on the I/O loop). ``CommandError`` carries a refusal the operator reads."""
        match cmd:
            case Status():
                return await self._status()
            case Stats():
                return await self._stats()
            case Users():
                return await self._users()
            case User(user_id=user_id):
                return await self._user(user_id)
            case Positions():
                return await self._positions(cmd)
            case Trades():
                return await self._trades(cmd)
            case InjectSignal(payload=payload):
                return await self._inject(payload)
            case DryRun(payload=payload):
                return await self._dry_run(payload)
            case Pause() | Resume():
                return await self._pause(cmd, paused=isinstance(cmd, Pause))
            case Close(position_id=position_id):
                return await self._close(position_id)
            case CloseAll(user_id=user_id):
                return await self._close_all(user_id)
            case SetPrice(symbol=symbol, price=price):
                return self._set_price(symbol, price)
            case Reconcile():
                count = await self._blocking(self._reconcile_all)
                return {"followers_asked": count}
            case Reload():
                return await self._reload()
            case SetLogLevel(level=level):
                logs.set_level(level)
                log.info("admin.log_level_set", level=level, peer_uid=peer.uid)
                return {"level": level}
            case Drain():
                await self._blocking(lambda: self._set_draining(True))
                return {"draining": True}
            case Shutdown():
                # run_engine's main loop sees the flag within a fraction of a second and stops the engine
                # (drain, settle, flush): reply first, the socket closes with the engine.
                self._shutdown.set()
                log.warning("engine.shutdown_requested", peer_uid=peer.uid, peer_pid=peer.pid)
                return {"shutting_down": True}
        raise CommandError(f"command {type(cmd).__name__} is not handled by this engine")

    def _parse(self, payload: dict[str, Any]) -> Signal:
        data = {**payload, "signal_id": 0}
        if not data.get("external_id"):
            data["external_id"] = f"admin-{uuid.uuid4().hex}"
        try:
            return parse_signal(data, now=self._clock.now(), max_age_s=self._max_signal_age_s)
        except SignalRejected as exc:
            raise CommandError(f"signal rejected: {exc.reason}: {exc.detail}") from None

    async def _draining(self) -> bool:
        """Asked of the router, the one owner of draining (the ``drain`` command's message is ahead in its
        mailbox, so a drain is seen by the next command)."""
        return bool(await self._blocking(lambda: self._get(self._router.proxy().draining())))

    async def _require_known_whale(self, whale_id: int) -> None:
        known = await self._blocking(lambda: self._get(self._router.proxy().known_whales()))
        if whale_id not in known:
            listed = ", ".join(map(str, sorted(known))) or "none"
            raise CommandError(f"unknown whale {whale_id} (known: {listed})")

    # ---- signals -----------------------------------------------------------------------------------------

    async def _inject(self, payload: dict[str, Any]) -> dict[str, Any]:
        signal = self._parse(payload)
        if await self._draining():
            raise CommandError("the engine is draining: it takes no new signals")
        await self._require_known_whale(signal.whale_id)
        row, created = await self._store(signal)
        signal = msgspec.structs.replace(signal, signal_id=int(row["id"]))
        status = row["status"]
        if not self._intake_claims and status == "pending" and await self._route_own(signal):
            status = "processing"
        fields = {"signal_id": signal.signal_id, "external_id": signal.external_id, "symbol": row["symbol"]}
        if not created:
            log.info("admin.signal_exists", **fields, status=status)
            differs = [k for k in ("whale_id", "symbol", "side", "action") if str(row[k]) != str(_field(signal, k))]
            extra = {"differs_from_request": differs} if differs else {}
            return {**fields, "already_existed": True, "status": status, **extra}
        log.info("admin.signal_injected", **fields, whale_id=signal.whale_id, action=signal.action)
        return {**fields, "already_existed": False, "status": status}

    async def _store(self, signal: Signal) -> tuple[Mapping[str, Any], bool]:
        """Insert the signal (idempotent on ``external_id``): the stored row and whether this call created it.
        Raises ``CommandError`` saying whether anything was stored when the INSERT's answer is lost."""
        args = (
            signal.external_id, signal.whale_id, signal.symbol, signal.side.value, signal.action.value,
            signal.trade_type.value, signal.price, signal.size_usdt, signal.leverage, signal.priority.value,
            signal.detected_at, signal.expires_at, signal.fraction,
        )  # fmt: skip

        async def insert(conn: asyncpg.Connection) -> tuple[Mapping[str, Any], bool]:
            signal_id = await conn.fetchval(INSERT_SQL, *args)
            row = await conn.fetchrow(STORED_SIGNAL_SQL, signal.external_id)  # ours, or the earlier one
            return dict(row), signal_id is not None

        retry = f"retrying with the same external_id {signal.external_id!r} is safe (it is idempotent)"
        try:
            stored: tuple[Mapping[str, Any], bool] = await run_write(self._persistence, insert)
            return stored
        except WriteNotStarted as exc:
            _store_error(signal, str(exc), "not_stored")
            raise CommandError(f"signal not stored: the database writer is busy ({exc}); {retry}") from None
        except Exception as exc:  # noqa: BLE001 - the outcome is read back below, whatever failed
            error = f"{type(exc).__name__}: {exc}"
        # The COMMIT may have reached the server and its answer not come back: the database says what is durable.
        try:
            async with self._pool.acquire() as conn:
                found = await conn.fetchrow(STORED_SIGNAL_SQL, signal.external_id, timeout=self._ask_timeout_s)
        except Exception as exc:  # noqa: BLE001 - the operator is told the outcome is unknown
            _store_error(signal, error, "unknown")
            raise CommandError(
                f"signal outcome unknown: storing it failed ({error}) and the database could not be read back "
                f"({type(exc).__name__}); if it was stored the engine routes it; {retry}"
            ) from None
        if found is None:
            _store_error(signal, error, "not_stored")
            raise CommandError(f"signal not stored: {error}; nothing was written; {retry}")
        _store_error(signal, error, "stored")
        return dict(found), True  # stored by this request (or by one before it with the same external_id)

    async def _route_own(self, signal: Signal) -> bool:
        """No intake runs: claim the stored row by id, as the intake would, and route it. False: not claimed
        (someone else did, or the claim failed: the row stays 'pending', stored, for a retry or the next run)."""
        try:
            claimed = await run_write(self._persistence, lambda conn: conn.fetchval(CLAIM_ONE_SQL, signal.signal_id))
        except Exception as exc:  # noqa: BLE001 - the signal is stored; the reply says it is still pending
            log.warning("admin.signal_claim_error", signal_id=signal.signal_id, error=f"{type(exc).__name__}: {exc}")
            return False
        if claimed is None:
            return False
        self._router.tell(RouteSignal(signal=signal))
        return True

    async def _dry_run(self, payload: dict[str, Any]) -> dict[str, Any]:
        signal = self._parse(payload)
        await self._require_known_whale(signal.whale_id)
        mark = self._mark_price(signal.symbol, signal.trade_type)
        router = self._router.proxy()
        user_ids = await self._blocking(lambda: self._get(router.followers_of(signal.whale_id)))
        draining = await self._draining()
        results = await self._blocking(lambda: self._ask_dry_run(sorted(user_ids), signal, mark, draining=draining))
        actions = Counter(str(r["action"]) for r in results)
        reasons = Counter(str(r["reason"]) for r in results if r["action"] == "skip")
        return {
            "whale_id": signal.whale_id,
            "symbol": signal.symbol,
            "mark": mark,
            "followers": len(results),
            "actions": dict(actions),
            "skip_reasons": dict(reasons),
            "results": results[:DRY_RUN_LIST_LIMIT],
            "capped": len(results) > DRY_RUN_LIST_LIMIT,
        }

    def _ask_dry_run(
        self, user_ids: list[int], signal: Signal, mark: Decimal | None, *, draining: bool
    ) -> list[dict[str, Any]]:
        """Runs in the executor: ask every follower at once, then collect (one timeout for the lot)."""
        refs = self._refs()
        pending: list[tuple[int, Any]] = []
        results: list[dict[str, Any]] = []
        for user_id in user_ids:
            try:
                pending.append((user_id, refs[user_id].proxy().dry_run(signal, mark, draining=draining)))
            except (KeyError, pykka.ActorDeadError):
                results.append({"user_id": user_id, "action": "unavailable", "reason": None})
        deadline = time.monotonic() + self._ask_timeout_s
        for user_id, future in pending:
            try:
                results.append(future.get(timeout=max(0.0, deadline - time.monotonic())))
            except (pykka.ActorDeadError, pykka.Timeout) as exc:
                results.append({"user_id": user_id, "action": "unavailable", "reason": type(exc).__name__})
            except Exception as exc:  # noqa: BLE001 - one follower's bug must not hide the others' answers
                results.append({"user_id": user_id, "action": "error", "reason": f"{type(exc).__name__}: {exc}"})
        results.sort(key=lambda r: int(r["user_id"]))
        return results

    # ---- pause / resume ----------------------------------------------------------------------------------

    async def _pause(self, cmd: Pause | Resume, *, paused: bool) -> dict[str, Any]:
        pauses = self.pauses
        if cmd.target == "all":
            pauses.everything = paused
            told = await self._blocking(lambda: self._apply_user_pauses(self._refs()))
            return {"target": "all", "paused": paused, "followers": told}
        if cmd.target == "user":
            user_id = int(cmd.target_id or 0)
            ref = await self._follower(user_id)
            (pauses.users.add if paused else pauses.users.discard)(user_id)
            self._apply_user_pauses({user_id: ref})
            return {"target": "user", "user_id": user_id, "paused": pauses.user_paused(user_id)}
        if cmd.target == "whale":
            whale_id = int(cmd.target_id or 0)
            await self._require_known_whale(whale_id)
            message = SetWhalePaused(whale_id=whale_id, paused=paused)
            (pauses.whales.add if paused else pauses.whales.discard)(whale_id)
            self._router.tell(message)
            return {"target": "whale", "whale_id": whale_id, "paused": paused}
        return await self._pause_exchange(str(cmd.exchange), paused=paused)

    def _apply_user_pauses(self, refs: dict[int, Any]) -> int:
        """Tell each follower its operator override: paused, or none (its own setting applies)."""
        told = 0
        for user_id, ref in refs.items():
            # ``None`` clears the override: the user's own ``users.paused`` applies again.
            try:
                ref.tell(SetPaused(paused=True if self.pauses.user_paused(user_id) else None))
                told += 1
            except pykka.ActorDeadError:
                pass  # restarting; it gets the override on the next pause / resume / reload
        return told

    async def _pause_exchange(self, name: str, *, paused: bool) -> dict[str, Any]:
        venue = self._venues.get(name)
        if venue is None:
            listed = ", ".join(sorted(self._venues))
            raise CommandError(f"unknown exchange {name!r} (venues: {listed})")
        # The override, not entries_open alone: the venue's next health change would reopen entries.
        venue.pause_entries(paused)
        (self.pauses.exchanges.add if paused else self.pauses.exchanges.discard)(name)
        return {"target": "exchange", "exchange": name, "paused": paused, "entries_open": venue.entries_open}

    # ---- positions -----------------------------------------------------------------------------------------

    async def _close(self, position_id: str) -> dict[str, Any]:
        user_id = await position_owner(self._pool, position_id)
        ref = await self._follower(user_id)
        reply: dict[str, Any] = await self._blocking(lambda: self._get(ref.proxy().close_position(position_id)))
        if not reply.get("closing") and reply.get("detail") == "no such open position":
            raise CommandError(f"position {position_id!r} is not open")
        return {"user_id": user_id, **reply}

    async def _close_all(self, user_id: int) -> dict[str, Any]:
        ref = await self._follower(user_id)
        closes: list[dict[str, Any]] = await self._blocking(lambda: self._get(ref.proxy().close_all()))
        closing = sum(1 for c in closes if c.get("closing"))
        return {"user_id": user_id, "closing": closing, "positions": closes}

    # ---- prices, reload ----------------------------------------------------------------------------------

    def _set_price(self, symbol: str, price: Decimal) -> dict[str, Any]:
        paper = [v for v in self._venues.values() if v.adapter.settable_marks]
        if not paper:
            raise CommandError("no paper venue: `price` sets marks on the paper venue only")
        for venue in paper:
            if "/" in symbol and symbol not in venue.markets:
                raise CommandError(f"unknown symbol {symbol!r} on venue {venue.name}")
            try:
                venue.adapter.set_mark(symbol, price)
            except ValueError as exc:
                raise CommandError(str(exc)) from None
        names = {v.name for v in paper}
        feeds = [f for f in self._price_feeds if f.state()["venue"] in names]
        for feed in feeds:
            feed.poke()  # followers see the mark now, so SL/TP react without waiting for the next tick
        return {"symbol": symbol, "price": price, "venues": sorted(names), "feeds_poked": len(feeds)}

    async def _reload(self) -> dict[str, Any]:
        result = await self._reload_follows()
        if self.pauses.everything or self.pauses.users:
            # New followers start without the operator's overrides.
            await self._blocking(lambda: self._apply_user_pauses(_paused_only(self._refs(), self.pauses)))
        return dict(result)


def _store_error(signal: Signal, error: str, outcome: str) -> None:
    log.warning("admin.signal_store_error", external_id=signal.external_id, error=error, outcome=outcome)


def _field(signal: Signal, name: str) -> Any:
    value = getattr(signal, name)
    return getattr(value, "value", value)  # enums as stored


def _paused_only(refs: dict[int, Any], pauses: OperatorPauses) -> dict[int, Any]:
    return {uid: ref for uid, ref in refs.items() if pauses.user_paused(uid)}
