"""The trade (one order) state machine.

::

    PENDING ──> SUBMITTED ──> FILLED | PARTIALLY_FILLED | REJECTED | FAILED | CANCELLED
       │            └──────> UNKNOWN ──> FILLED | PARTIALLY_FILLED | REJECTED | FAILED | CANCELLED
       ├──> UNKNOWN  (recovered at start-up: the intent was durable, the send may or may not have happened)
       └──> FAILED   (the intent was not durable, or the order was never sent)

FILLED, PARTIALLY_FILLED (the venue filled part and cancelled the rest), REJECTED, FAILED and CANCELLED are
final. Any other move raises ``IllegalTransition``. Re-applying the CURRENT status is a no-op that returns
``False`` (outcomes can be delivered twice: a retry, a reconciliation racing a late answer), so it does not
bump the version; every real transition bumps it.

``Trade`` is mutable and owned by one actor; others see ``TradeRow`` (``to_row``).
"""

from __future__ import annotations

from decimal import Decimal

from engine.messages import OrderOutcome, OrderRequest, Side, Signal, TradeRow, TradeStatus, TradeType
from engine.sizing import EntryPlan, ExitPlan

__all__ = ["FINAL_STATUSES", "TRANSITIONS", "IllegalTransition", "Trade"]

_S = TradeStatus
_ZERO = Decimal(0)
_OUTCOMES = frozenset({_S.FILLED, _S.PARTIALLY_FILLED, _S.REJECTED, _S.FAILED, _S.CANCELLED})

TRANSITIONS: dict[TradeStatus, frozenset[TradeStatus]] = {
    _S.PENDING: frozenset({_S.SUBMITTED, _S.FAILED, _S.UNKNOWN}),
    _S.SUBMITTED: _OUTCOMES | {_S.UNKNOWN},
    _S.UNKNOWN: _OUTCOMES,
    _S.FILLED: frozenset(),
    _S.PARTIALLY_FILLED: frozenset(),
    _S.REJECTED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}
"""Legal moves: ``TRANSITIONS[current]`` is the set of statuses a trade may move to."""

FINAL_STATUSES = frozenset(s for s, nxt in TRANSITIONS.items() if not nxt)


class IllegalTransition(Exception):
    """A move the state machine forbids (e.g. FILLED → UNKNOWN)."""

    def __init__(self, client_order_id: str, current: TradeStatus, target: TradeStatus) -> None:
        super().__init__(f"trade {client_order_id}: illegal transition {current} -> {target}")
        self.client_order_id = client_order_id
        self.current = current
        self.target = target


class Trade:
    """One order for one follower. Not thread-safe: owned by one actor."""

    __slots__ = (
        "client_order_id",
        "error",
        "exchange_order_id",
        "executed_price",
        "executed_qty",
        "fee_base",
        "fee_usdt",
        "leverage",
        "position_id",
        "price",
        "qty",
        "reduce_only",
        "side",
        "signal_id",
        "status",
        "symbol",
        "trade_type",
        "user_id",
        "venue",
        "version",
        "whale_id",
    )

    def __init__(
        self,
        *,
        client_order_id: str,
        user_id: int,
        venue: str,
        symbol: str,
        trade_type: TradeType,
        side: Side,
        qty: Decimal,
        price: Decimal,
        reduce_only: bool = False,
        leverage: int = 1,
        signal_id: int | None = None,
        whale_id: int | None = None,
        position_id: str | None = None,
        status: TradeStatus = TradeStatus.PENDING,
        exchange_order_id: str | None = None,
        executed_qty: Decimal = Decimal(0),
        executed_price: Decimal | None = None,
        fee_usdt: Decimal = Decimal(0),
        error: str | None = None,
        version: int = 1,
    ) -> None:
        """A new trade is PENDING at version 1; the other fields restore one (see ``from_row``)."""
        self.client_order_id = client_order_id
        self.user_id = user_id
        self.venue = venue
        self.symbol = symbol
        self.trade_type = trade_type
        self.side = side
        self.qty = qty
        self.price = price
        self.reduce_only = reduce_only
        self.leverage = leverage
        self.signal_id = signal_id
        self.whale_id = whale_id
        self.position_id = position_id
        self.status = status
        self.exchange_order_id = exchange_order_id
        self.executed_qty = executed_qty
        self.executed_price = executed_price
        self.fee_usdt = fee_usdt
        self.error = error
        self.version = version
        self.fee_base = Decimal(0)  # not persisted: it only shapes the position the fill opens (see ledger)

    @classmethod
    def for_plan(cls, plan: EntryPlan | ExitPlan, *, signal: Signal, user_id: int, venue: str) -> Trade:
        """The PENDING trade of a sizing plan for ``signal``."""
        return cls(
            client_order_id=plan.client_order_id,
            user_id=user_id,
            venue=venue,
            symbol=plan.symbol,
            trade_type=plan.trade_type,
            side=plan.side,
            qty=plan.qty,
            price=plan.price,
            reduce_only=plan.reduce_only,
            leverage=plan.leverage,
            signal_id=signal.signal_id,
            whale_id=signal.whale_id,
            position_id=plan.position_id,
        )

    @property
    def _spot_buy(self) -> bool:
        return self.trade_type is TradeType.SPOT and self.side is Side.BUY and not self.reduce_only

    @property
    def is_final(self) -> bool:
        """No further transition is possible."""
        return self.status in FINAL_STATUSES

    def transition(
        self,
        target: TradeStatus,
        *,
        exchange_order_id: str | None = None,
        filled_qty: Decimal | None = None,
        avg_price: Decimal | None = None,
        fee_usdt: Decimal | None = None,
        error: str | None = None,
    ) -> bool:
        """Move to ``target``, recording what is given. ``True`` if it moved, ``False`` if already there.

        FILLED and PARTIALLY_FILLED need ``filled_qty > 0`` and ``avg_price``; filled qty may not exceed
        the ordered qty, except for a spot market buy: a venue that sizes those in the quote coin (Bitget)
        spends the ordered notional (qty x hint), so the base it fills is larger whenever the price fell since
        the hint, and the account holds what the venue filled. Raises ``IllegalTransition`` or ``ValueError``;
        on error nothing changes.
        """
        if target is self.status:
            return False
        if target not in TRANSITIONS[self.status]:
            raise IllegalTransition(self.client_order_id, self.status, target)
        if target in (TradeStatus.FILLED, TradeStatus.PARTIALLY_FILLED):
            if filled_qty is None or filled_qty <= 0 or avg_price is None or avg_price <= 0:
                raise ValueError(f"trade {self.client_order_id}: {target} needs filled qty and avg price")
            if filled_qty > self.qty and not self._spot_buy:
                raise ValueError(f"trade {self.client_order_id}: filled {filled_qty} > ordered {self.qty}")
            self.executed_qty, self.executed_price = filled_qty, avg_price
        self.status = target
        if exchange_order_id is not None:
            self.exchange_order_id = exchange_order_id
        if fee_usdt is not None:
            self.fee_usdt = fee_usdt
        if error is not None:
            self.error = error
        self.version += 1
        return True

    def apply_outcome(self, outcome: OrderOutcome) -> bool:
        """Apply an exchange actor's ``OrderOutcome`` (see ``transition``).

        An outcome of SUBMITTED (resting on the book) for a trade that is UNKNOWN is ignored (``False``):
        the order exists but its fate is still open, so the trade stays to be resolved.
        """
        if outcome.status is TradeStatus.SUBMITTED and self.status is TradeStatus.UNKNOWN:
            return False
        self.fee_base = outcome.fee_base
        return self.transition(
            outcome.status,
            exchange_order_id=outcome.exchange_order_id,
            filled_qty=outcome.filled_qty,
            avg_price=outcome.avg_price,
            fee_usdt=outcome.fee_usdt,
            error=outcome.error,
        )

    def to_order_request(self) -> OrderRequest:
        """The order to send for this trade."""
        return OrderRequest(
            client_order_id=self.client_order_id,
            user_id=self.user_id,
            venue=self.venue,
            symbol=self.symbol,
            trade_type=self.trade_type,
            side=self.side,
            qty=self.qty,
            price_hint=self.price,
            reduce_only=self.reduce_only,
            leverage=self.leverage,
            signal_id=self.signal_id,
            position_id=self.position_id,
        )

    def to_row(self, *, reserved_usdt: Decimal = _ZERO) -> TradeRow:
        """The immutable row to persist or send; ``reserved_usdt`` is the order's reservation, if it holds one."""
        return TradeRow(
            client_order_id=self.client_order_id,
            user_id=self.user_id,
            venue=self.venue,
            symbol=self.symbol,
            trade_type=self.trade_type,
            side=self.side,
            qty=self.qty,
            price=self.price,
            status=self.status,
            reduce_only=self.reduce_only,
            leverage=self.leverage,
            signal_id=self.signal_id,
            whale_id=self.whale_id,
            position_id=self.position_id,
            exchange_order_id=self.exchange_order_id,
            executed_qty=self.executed_qty,
            executed_price=self.executed_price,
            fee_usdt=self.fee_usdt,
            error=self.error,
            reserved_usdt=reserved_usdt,
            version=self.version,
        )

    @classmethod
    def from_row(cls, row: TradeRow) -> Trade:
        """Restore a trade (e.g. an UNKNOWN one after a restart) from its row."""
        return cls(**{name: getattr(row, name) for name in row.__struct_fields__ if name != "reserved_usdt"})
