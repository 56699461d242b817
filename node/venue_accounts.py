"""Accounts on the venues at start-up: who trades with which credential, and what they start with.

For every user, on the venue named by ``users.preferred_exchange`` (a ``[[venues]]`` ``name``):

* paper venue: the in-memory exchange is funded with what the books say (a new user gets
  ``paper_starting_usdt``), as it always was;
* ccxt venue (binance / bybit / bitget): ``users.credential_ref`` is registered with the adapter
  (``register_account``), then the free USDT is fetched from the venue (``fetch_balance``) with bounded
  concurrency and paced within the venue's weight budget. The venue is the truth: the ``balances`` row is
  replaced by it (what our books hold reserved for orders still open stays reserved). A user whose fetch fails
  (no credential, auth error, timeout...) is logged and starts with what the ``balances`` table says; start-up
  never fails because of one account.

Runs on the main thread at start (``prepare_accounts``: blocks on the I/O loop) and on the I/O loop for a
follower started later (``prepare_account``: never blocks, so no balance fetch there). Secrets are never
logged: only the reference's kind (``file``/``env``/``enc``) is.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

import pykka

from actors.persistence import PersistenceActor
from adapters.ioloop import IoLoop
from adapters.venue_factory import venue_trade_type
from engine.clock import Clock
from engine.follower_state import FollowerState
from engine.logs import get_logger
from engine.messages import BalanceRow, PersistRows
from engine.ratelimit import TokenBucket
from node.venues import Venue

__all__ = ["prepare_account", "prepare_accounts"]

log = get_logger(__name__)

BALANCE_FETCH_CONCURRENCY = 16
BALANCE_FETCH_TIMEOUT_S = 30.0
_STARTUP_BUDGET_SHARE = 0.5  # of the venue's window: the exchange actor starts with a full budget of its own
_ASSET = "USDT"


def prepare_accounts(
    states: Iterable[FollowerState],
    *,
    venues: Mapping[str, Venue],
    persistence: pykka.ActorRef[PersistenceActor],
    io: IoLoop,
    clock: Clock,
) -> list[FollowerState]:
    """Every follower's state, ready for its venue: accounts registered, balances from the venue (main thread;
    ``clock`` paces the balance fetches within the venue's weight window)."""
    prepared = [prepare_account(state, venues=venues, persistence=persistence) for state in states]
    by_venue: dict[str, list[FollowerState]] = {}
    for state in prepared:
        venue = venues.get(state.user.preferred_exchange)
        if venue is not None and not venue.adapter.funds_accounts and state.user.credential_ref:
            by_venue.setdefault(venue.name, []).append(state)
    fetched: dict[int, FollowerState] = {}
    for name, on_venue in by_venue.items():
        venue = venues[name]
        timeout_s = BALANCE_FETCH_TIMEOUT_S * (1 + len(on_venue) / BALANCE_FETCH_CONCURRENCY) + 60
        for state in io.run(_fetch_balances(venue, on_venue, clock), timeout_s):
            fetched[state.user.user_id] = state
    updated = [fetched.get(state.user.user_id, state) for state in prepared]
    rows = tuple(_usdt_row(state, venues[state.user.preferred_exchange]) for state in fetched.values())
    if rows:
        persistence.tell(PersistRows(rows=tuple(row for row in rows if row is not None)))
    return updated


def prepare_account(
    state: FollowerState, *, venues: Mapping[str, Venue], persistence: pykka.ActorRef[PersistenceActor]
) -> FollowerState:
    """One follower, without I/O: paper funding, or the credential registered with its ccxt venue. Safe on
    the I/O loop (the supervisor starts followers there)."""
    venue = venues.get(state.user.preferred_exchange)
    if venue is None:
        return state
    if venue.adapter.funds_accounts:
        return _with_paper_balance(persistence, venue, state)
    ref = state.user.credential_ref
    register = getattr(venue.adapter, "register_account", None)
    if ref and register is not None:
        register(state.user.user_id, ref)
    elif not ref:
        log.warning("venue.account_without_credential", venue=venue.name, user_id=state.user.user_id)
    return state


def _with_paper_balance(
    persistence: pykka.ActorRef[PersistenceActor], venue: Venue, state: FollowerState
) -> FollowerState:
    """A paper account starts funded; the paper venue (in memory) gets what our books say the user has."""
    usdt = [b for b in state.balances if b.venue == venue.name and b.asset == _ASSET]
    if not usdt:
        start = Decimal(str(venue.config.paper_starting_usdt))
        row = BalanceRow(user_id=state.user.user_id, venue=venue.name, asset=_ASSET, free=start, reserved=Decimal(0))
        persistence.tell(PersistRows(rows=(row,)))
        usdt = [row]
        state = _replace_balances(state, (*state.balances, row))
    venue.paper_fund(state.user.user_id, usdt[0].free + usdt[0].reserved, state.positions)
    return state


async def _fetch_balances(venue: Venue, states: list[FollowerState], clock: Clock) -> list[FollowerState]:
    """On the I/O loop: the states whose balance the venue gave us, with that balance in them."""
    trade_type = venue_trade_type(venue.config)
    weight = max(1, venue.adapter.request_weight("fetch_balance"))
    window_s = venue.config.weight_window_s
    budget = max(weight, int(venue.config.weight_per_minute * window_s / 60 * _STARTUP_BUDGET_SHARE))
    pacer = _Pacer(TokenBucket(capacity=budget, window_s=window_s), weight, clock)
    gate = asyncio.Semaphore(BALANCE_FETCH_CONCURRENCY)
    failed: dict[str, int] = {}

    async def one(state: FollowerState) -> FollowerState | None:
        user_id = state.user.user_id
        async with gate:
            await pacer.acquire()
            try:
                async with asyncio.timeout(BALANCE_FETCH_TIMEOUT_S):
                    free = await venue.adapter.fetch_balance(user_id=user_id, trade_type=trade_type)
            except Exception as exc:  # noqa: BLE001 - one account must not stop start-up: books are the fallback
                kind = type(exc).__name__
                failed[kind] = failed.get(kind, 0) + 1
                log.warning(
                    "venue.balance_fetch_failed",
                    venue=venue.name,
                    user_id=user_id,
                    credential_kind=_ref_kind(state.user.credential_ref),
                    error=f"{kind}: {exc}",  # classified venue errors never carry credentials
                )
                return None
            finally:
                pacer.release()
        return _with_venue_balance(state, venue.name, free.get(_ASSET, Decimal(0)))

    results = await asyncio.gather(*(one(state) for state in states))
    done = [state for state in results if state is not None]
    log.info("venue.balances_fetched", venue=venue.name, accounts=len(states), fetched=len(done), failed=failed or None)
    return done


class _Pacer:
    """Keeps start-up balance fetches within a share of the venue's weight window (I/O loop only)."""

    def __init__(self, bucket: TokenBucket, weight: int, clock: Clock) -> None:
        self._bucket = bucket
        self._clock = clock
        self._weight = min(weight, bucket.capacity)

    async def acquire(self) -> None:
        while not self._bucket.try_acquire(self._weight, self._clock.monotonic(), hold=True):
            wait_s = self._bucket.wait_time(self._weight, self._clock.monotonic())
            await asyncio.sleep(min(wait_s, 0.5) if wait_s != float("inf") else 0.05)

    def release(self) -> None:
        self._bucket.settle(self._weight, self._clock.monotonic())


def _with_venue_balance(state: FollowerState, venue: str, venue_free: Decimal) -> FollowerState:
    """The venue's free USDT as our books' balance; what the books reserve for open orders stays reserved (the
    venue may or may not count those orders yet: keeping the reservation errs on the side of not over-spending)."""
    old = next((b for b in state.balances if b.venue == venue and b.asset == _ASSET), None)
    reserved = old.reserved if old is not None else Decimal(0)
    version = old.version + 1 if old is not None else 1
    row = BalanceRow(
        user_id=state.user.user_id,
        venue=venue,
        asset=_ASSET,
        free=max(Decimal(0), venue_free - reserved),
        reserved=reserved,
        version=version,
    )
    others = tuple(b for b in state.balances if not (b.venue == venue and b.asset == _ASSET))
    return _replace_balances(state, (*others, row))


def _usdt_row(state: FollowerState, venue: Venue) -> BalanceRow | None:
    return next((b for b in state.balances if b.venue == venue.name and b.asset == _ASSET), None)


def _replace_balances(state: FollowerState, balances: tuple[BalanceRow, ...]) -> FollowerState:
    fields: dict[str, Any] = {name: getattr(state, name) for name in state.__struct_fields__}
    fields["balances"] = balances
    return FollowerState(**fields)


def _ref_kind(ref: str | None) -> str:
    """``file``/``env``/``enc``: what a log line may say about a credential reference."""
    return ref.partition(":")[0] if ref else "none"
