"""The account state one follower owns: balances, reservations, positions, daily counters, snapshots.

``Portfolio`` is mutable and owned by one actor (the follower). Definitions:

* balances are per (venue, asset) with ``free`` and ``reserved``; both are never negative. ``reserve`` moves
  free → reserved for an order in flight and answers ``False`` when free is short; ``release`` moves it back
  (rejected/failed order); ``settle(reserved, actual_cost)`` ends a reservation for a fill: the reservation
  leaves, the difference (reserved - actual) goes back to free, or is taken from free when the fill cost
  more. Misuse (negative amounts, releasing more than is reserved, a cost free cannot cover) raises
  ``BalanceError``: it means the books disagree with the venue, and the caller should resync balances.
* ``credit`` / ``debit`` change free for cash that does not pass through a reservation (a closing fill's
  ``Realized.cash_returned_usdt``, deposits, fees taken later).
* daily counters (trades today, realised PnL today) roll at 00:00 UTC.
* day close: the first ``snapshot`` after the counters rolled closes the day that ended. It is stamped at that
  day's last microsecond (``day_end``) with that day's trade count and the realised total at the boundary:
  the exact baseline from which a restart on the next day computes "realised today". Its balances and equity
  are those when it is taken (the day-roll timer takes it within about a second of midnight).
* equity = free + reserved + Σ margin of active positions + Σ their unrealised PnL, in USDT (only USDT
  balances count; unrealised at the given marks, else the position's last known value). For spot, "margin"
  is the cost of the holding, so margin + unrealised is its market value.
* ``SnapshotRow.realized_pnl_usdt`` is the running realised total (``realized_total_usdt``, which the caller
  seeds on load with the total of the user's positions).

``performance(...)`` summarises closed positions and an equity series: win rate (wins / closed, where a win
is realised PnL > 0), realised PnL by UTC day of closing, and max drawdown (largest peak-to-trough fall of
equity, in USDT and in percent of that peak).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

from engine.messages import BalanceRow, PositionRow, PositionStatus, SnapshotRow
from engine.positions import Position
from engine.sizing import AccountView, HeldPosition

__all__ = [
    "USDT",
    "Balance",
    "BalanceError",
    "DayClose",
    "Performance",
    "Portfolio",
    "day_end",
    "max_drawdown",
    "performance",
]

_ZERO = Decimal(0)
USDT = "USDT"


class BalanceError(ValueError):
    """A balance operation that would make free or reserved negative, or a negative amount."""


@dataclass(slots=True)
class Balance:
    """One asset on one venue. Mutate through ``Portfolio`` only."""

    free: Decimal = _ZERO
    reserved: Decimal = _ZERO
    version: int = 1


# (venue, asset) keys shared by every portfolio: 100,000 followers on one venue hold one tuple, not 100,000.
_keys: dict[tuple[str, str], tuple[str, str]] = {}


def _key(venue: str, asset: str) -> tuple[str, str]:
    key = (venue, asset)
    return _keys.setdefault(key, key)


def day_end(day: date) -> datetime:
    """The last instant (microsecond) of the UTC ``day``: where a day-close snapshot is stamped."""
    return datetime.combine(day + timedelta(days=1), time.min, UTC) - timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class DayClose:
    """A UTC day's figures, kept when the daily counters roll until the day-close snapshot is taken."""

    day: date
    trades: int
    realized_total_usdt: Decimal  # the running total at the day's end: the next day's baseline


def _non_negative(amount: Decimal, what: str) -> None:
    if not amount.is_finite() or amount < 0:
        raise BalanceError(f"{what} must be a non-negative amount, got {amount}")


class Portfolio:
    """One follower's account across venues. Not thread-safe: owned by one actor."""

    __slots__ = (
        "_balances",
        "_day",
        "_day_close",
        "positions",
        "realized_today_usdt",
        "realized_total_usdt",
        "trades_today",
        "user_id",
    )

    def __init__(self, user_id: int, *, now: datetime, realized_total_usdt: Decimal = _ZERO) -> None:
        """An empty portfolio; ``now`` (tz-aware UTC) starts the daily counters."""
        self.user_id = user_id
        self._balances: dict[tuple[str, str], Balance] = {}
        self.positions: dict[str, Position] = {}  # active positions by position id
        self._day: date = now.date()
        self._day_close: DayClose | None = None  # a day that ended, its closing snapshot not yet taken
        self.trades_today = 0
        self.realized_today_usdt = _ZERO
        self.realized_total_usdt = realized_total_usdt

    # -- balances ------------------------------------------------------------------------------------------

    def balance(self, venue: str, asset: str = USDT) -> Balance:
        """The balance of ``asset`` on ``venue`` (created empty on first use)."""
        bal = self._balances.get((venue, asset))
        if bal is None:
            bal = self._balances[_key(venue, asset)] = Balance()
        return bal

    def restore_balance(self, venue: str, asset: str, *, free: Decimal, reserved: Decimal, version: int) -> None:
        """Set a balance as the books had it (start-up, from its ``balances`` row)."""
        self._balances[_key(venue, asset)] = Balance(free, reserved, version)

    def venues_holding(self, asset: str = USDT) -> list[str]:
        """The venues this portfolio has an ``asset`` balance on."""
        return [venue for venue, a in self._balances if a == asset]

    def set_free(self, venue: str, amount: Decimal, asset: str = USDT) -> None:
        """Overwrite the free amount (from the venue's own balance); reservations are kept."""
        _non_negative(amount, "free balance")
        bal = self.balance(venue, asset)
        bal.free = amount
        bal.version += 1

    def reserve(self, venue: str, amount: Decimal, asset: str = USDT) -> bool:
        """Move ``amount`` from free to reserved; ``False`` (and no change) when free is short."""
        _non_negative(amount, "reserve")
        bal = self.balance(venue, asset)
        if amount > bal.free:
            return False
        bal.free -= amount
        bal.reserved += amount
        bal.version += 1
        return True

    def release(self, venue: str, amount: Decimal, asset: str = USDT) -> None:
        """Give a reservation back to free (the order did not happen)."""
        _non_negative(amount, "release")
        bal = self.balance(venue, asset)
        if amount > bal.reserved:
            raise BalanceError(f"release {amount} > reserved {bal.reserved} on {venue} {asset}")
        bal.reserved -= amount
        bal.free += amount
        bal.version += 1

    def settle(self, venue: str, reserved: Decimal, actual_cost: Decimal, asset: str = USDT) -> None:
        """End a reservation of ``reserved`` for a fill that cost ``actual_cost`` (margin + fee)."""
        _non_negative(reserved, "settled reservation")
        _non_negative(actual_cost, "actual cost")
        bal = self.balance(venue, asset)
        if reserved > bal.reserved:
            raise BalanceError(f"settle {reserved} > reserved {bal.reserved} on {venue} {asset}")
        if bal.free + reserved < actual_cost:
            raise BalanceError(f"cost {actual_cost} > reserved {reserved} + free {bal.free} on {venue}")
        bal.reserved -= reserved
        bal.free += reserved - actual_cost
        bal.version += 1

    def credit(self, venue: str, amount: Decimal, asset: str = USDT) -> None:
        """Add ``amount`` to free (e.g. the cash a closing fill returns)."""
        _non_negative(amount, "credit")
        bal = self.balance(venue, asset)
        bal.free += amount
        bal.version += 1

    def debit(self, venue: str, amount: Decimal, asset: str = USDT) -> None:
        """Take ``amount`` from free; raises ``BalanceError`` if free is short."""
        _non_negative(amount, "debit")
        bal = self.balance(venue, asset)
        if amount > bal.free:
            raise BalanceError(f"debit {amount} > free {bal.free} on {venue} {asset}")
        bal.free -= amount
        bal.version += 1

    def balance_rows(self) -> list[BalanceRow]:
        """Rows for every balance this portfolio knows."""
        return [
            BalanceRow(
                user_id=self.user_id,
                venue=venue,
                asset=asset,
                free=b.free,
                reserved=b.reserved,
                version=b.version,
            )
            for (venue, asset), b in self._balances.items()
        ]

    # -- daily counters ----------------------------------------------------------------------------------

    def _roll(self, now: datetime) -> None:
        today = now.date()  # callers pass UTC, so this is the UTC day
        if today != self._day:
            # Before anything of the new day is counted: the total now is the total at the boundary.
            self._day_close = DayClose(self._day, self.trades_today, self.realized_total_usdt)
            self._day, self.trades_today, self.realized_today_usdt = today, 0, _ZERO

    def record_trade(self, now: datetime) -> None:
        """Count one trade (an entry or exit order that filled) toward today's limit."""
        self._roll(now)
        self.trades_today += 1

    def record_realized(self, pnl_usdt: Decimal, now: datetime) -> None:
        """Add realised PnL (negative for a loss; entry fees count as a loss) to today and the total."""
        self._roll(now)
        self.realized_today_usdt += pnl_usdt
        self.realized_total_usdt += pnl_usdt

    # -- positions ---------------------------------------------------------------------------------------

    def add_position(self, position: Position) -> None:
        """Track an active position."""
        self.positions[position.position_id] = position

    def remove_position(self, position_id: str) -> Position | None:
        """Stop tracking a position (closed or liquidated)."""
        return self.positions.pop(position_id, None)

    def position_on(self, venue: str, symbol: str) -> Position | None:
        """The active position on ``symbol`` at ``venue``, if any (at most one per symbol)."""
        for pos in self.positions.values():
            if pos.venue == venue and pos.symbol == symbol and pos.is_active:
                return pos
        return None

    def account_view(
        self,
        *,
        venue: str,
        symbol: str,
        now: datetime,
        busy: bool = False,
        opening: int = 0,
        in_flight: int = 0,
        draining: bool = False,
        venue_available: bool = True,
    ) -> AccountView:
        """What ``sizing.decide`` needs for a signal on ``symbol``; ``busy``: an order on it is in flight.
        ``opening``: entries in flight that will each open a position; ``in_flight``: all orders in flight (each
        will be a trade today). The limits count them, or a burst of signals would pass every limit at once."""
        self._roll(now)
        pos = self.position_on(venue, symbol)
        held = None
        if pos is not None:
            held = HeldPosition(
                position_id=pos.position_id,
                whale_id=pos.whale_id,
                side=pos.side,
                qty=pos.qty,
                leverage=pos.leverage,
                busy=busy or not _is_open(pos),
            )
        return AccountView(
            free_usdt=self.balance(venue).free,
            open_positions=sum(1 for p in self.positions.values() if p.is_active) + opening,
            trades_today=self.trades_today + in_flight,
            realized_pnl_today_usdt=self.realized_today_usdt,
            held=held,
            busy=busy,
            draining=draining,
            venue_available=venue_available,
        )

    # -- snapshot ------------------------------------------------------------------------------------------

    def equity_parts(self, marks: Mapping[str, Decimal]) -> tuple[Decimal, Decimal, Decimal, Decimal]:
        """``(free, reserved, margin, unrealised)`` in USDT; marks by symbol update the unrealised PnL."""
        free = sum((b.free for (_, a), b in self._balances.items() if a == USDT), _ZERO)
        reserved = sum((b.reserved for (_, a), b in self._balances.items() if a == USDT), _ZERO)
        margin = unrealized = _ZERO
        for pos in self.positions.values():
            if not pos.is_active:
                continue
            mark = marks.get(pos.symbol)
            margin += pos.margin_usdt
            unrealized += pos.unrealized_pnl(mark) if mark is not None else pos.unrealized_pnl_usdt
        return free, reserved, margin, unrealized

    def snapshot(self, now: datetime, marks: Mapping[str, Decimal]) -> SnapshotRow:
        """Equity and counters at ``now``; but when a UTC day ended since the last snapshot, that day's closing
        snapshot (see the module docstring for the definitions)."""
        self._roll(now)
        free, reserved, margin, unrealized = self.equity_parts(marks)
        taken_at, realized, trades = now, self.realized_total_usdt, self.trades_today
        if (closed := self._day_close) is not None:
            self._day_close = None
            taken_at, realized, trades = day_end(closed.day), closed.realized_total_usdt, closed.trades
        return SnapshotRow(
            user_id=self.user_id,
            taken_at=taken_at,
            equity_usdt=free + reserved + margin + unrealized,
            free_usdt=free,
            reserved_usdt=reserved,
            unrealized_pnl_usdt=unrealized,
            realized_pnl_usdt=realized,
            open_positions=sum(1 for p in self.positions.values() if p.is_active),
            trades_today=trades,
        )


def _is_open(pos: Position) -> bool:
    return pos.status is PositionStatus.OPEN


@dataclass(frozen=True, slots=True)
class Performance:
    """Summary of closed positions and an equity series."""

    closed: int
    wins: int
    losses: int
    win_rate: Decimal  # wins / closed, 0 when nothing closed
    realized_pnl_usdt: Decimal
    realized_by_day: dict[date, Decimal] = field(default_factory=dict)
    max_drawdown_usdt: Decimal = _ZERO
    max_drawdown_pct: Decimal = _ZERO


def performance(closed: Iterable[PositionRow], equity: Sequence[SnapshotRow]) -> Performance:
    """Win rate, realised PnL by UTC day and max drawdown (see the module docstring)."""
    wins = losses = 0
    total = _ZERO
    by_day: dict[date, Decimal] = {}
    for row in closed:
        pnl = row.realized_pnl_usdt
        total += pnl
        wins += pnl > 0
        losses += pnl <= 0
        day = row.closed_at or row.opened_at
        if day is not None:
            by_day[day.date()] = by_day.get(day.date(), _ZERO) + pnl
    count = wins + losses
    dd_usdt, dd_pct = max_drawdown([s.equity_usdt for s in sorted(equity, key=lambda s: s.taken_at)])
    return Performance(
        closed=count,
        wins=wins,
        losses=losses,
        win_rate=Decimal(wins) / count if count else _ZERO,
        realized_pnl_usdt=total,
        realized_by_day=dict(sorted(by_day.items())),
        max_drawdown_usdt=dd_usdt,
        max_drawdown_pct=dd_pct,
    )


def max_drawdown(series: Iterable[Decimal]) -> tuple[Decimal, Decimal]:
    """``(largest peak-to-trough fall, largest fall in percent of its peak)`` of an equity series."""
    peak: Decimal | None = None
    worst = worst_pct = _ZERO
    for value in series:
        peak = value if peak is None or value > peak else peak
        fall = peak - value
        worst = max(worst, fall)
        if peak > 0:
            worst_pct = max(worst_pct, fall / peak * 100)
    return worst, worst_pct
