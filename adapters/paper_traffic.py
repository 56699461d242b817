"""The paper venue's door: every call is logged, the venue's own weight limit and bans apply, and tests inject
faults into ``create_order`` calls. A mixin of ``PaperVenue`` (``adapters/paper.py``), whose lock guards this
state too; its attributes are set by ``PaperVenue.__init__``."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from decimal import Decimal

from engine.clock import Clock
from engine.logs import get_logger
from engine.venue import OrderRejected, RetryableError, VenueBanned

log = get_logger(__name__)

FAULT_KINDS = frozenset(
    {"reject", "rate_limit", "server_error", "timeout_after_accept", "partial_fill", "latency", "ban"}
)


@dataclass(slots=True)
class InjectedFault:
    kind: str
    remaining: int
    client_order_id: str | None
    retry_after_s: float | None
    ban_s: float
    fill_fraction: Decimal
    delay_ms: float


@dataclass(slots=True)
class CallRecord:
    at: float  # monotonic, when the call reached the venue
    operation: str
    weight: int
    client_order_id: str | None


class PaperTraffic:
    """Call log, weight limit, bans and injected faults (see the module docstring)."""

    name: str
    _lock: threading.Lock
    _clock: Clock
    _weight_limit: int | None
    _weight_window_s: float
    _create_calls: dict[str, int]
    _faults: list[InjectedFault]
    _calls: list[CallRecord]
    _recent_weight: deque[tuple[float, int]]
    _banned_until: float
    calls_while_banned: int
    rate_limited_calls: int

    def request_weight(self, operation: str) -> int:
        return 1

    def inject(
        self,
        kind: str,
        *,
        count: int = 1,
        client_order_id: str | None = None,
        retry_after_s: float | None = None,
        ban_s: float = 1.0,
        fill_fraction: Decimal = Decimal("0.5"),
        delay_ms: float = 100.0,
    ) -> None:
        """Make the next ``count`` ``create_order`` calls (for ``client_order_id``, or any) misbehave.

        ``reject`` OrderRejected; ``rate_limit`` 429 (RetryableError, ``retry_after_s``); ``server_error``
        5xx before any order exists (RetryableError); ``timeout_after_accept`` the order is created and
        filled, then the call raises OutcomeUnknown; ``partial_fill`` fills ``fill_fraction`` and cancels
        the rest;
        ``latency`` adds ``delay_ms``; ``ban`` HTTP 418: every call raises VenueBanned for ``ban_s``.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {sorted(FAULT_KINDS)}")
        fault = InjectedFault(kind, count, client_order_id, retry_after_s, ban_s, Decimal(fill_fraction), delay_ms)
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def create_calls(self, client_order_id: str) -> int:
        """How many ``create_order`` calls reached the venue for that id (retries included)."""
        with self._lock:
            return self._create_calls.get(client_order_id, 0)

    def calls(self) -> list[tuple[float, str, int, str | None]]:
        """Every call in arrival order: ``(monotonic_s, operation, weight, client_order_id)``."""
        with self._lock:
            return [(c.at, c.operation, c.weight, c.client_order_id) for c in self._calls]

    def max_weight_in_window(self, window_s: float) -> int:
        """The most request weight that arrived within any ``window_s`` (half-open) interval."""
        calls = self.calls()
        best = total = 0
        start = 0
        for at, _, weight, _ in calls:
            total += weight
            while calls[start][0] <= at - window_s:
                total -= calls[start][2]
                start += 1
            best = max(best, total)
        return best

    def _arrive(self, operation: str, client_order_id: str | None) -> InjectedFault | None:
        """Count the call, apply the venue's own limits and bans, and take the fault meant for it, if any."""
        now = self._clock.monotonic()
        weight = self.request_weight(operation)
        with self._lock:
            self._calls.append(CallRecord(now, operation, weight, client_order_id))
            if operation == "create_order" and client_order_id is not None:
                self._create_calls[client_order_id] = self._create_calls.get(client_order_id, 0) + 1
            if now < self._banned_until:
                self.calls_while_banned += 1
                raise VenueBanned("paper: 418 IP banned", ban_s=self._banned_until - now)
            self._check_weight_limit(now, weight)
            fault = self._take_fault(client_order_id) if operation == "create_order" else None
            if fault is None:
                return None
            log.debug("paper.fault", kind=fault.kind, client_order_id=client_order_id, venue=self.name)
            if fault.kind == "ban":
                self._banned_until = now + fault.ban_s
                raise VenueBanned("paper: 418 IP banned (injected)", ban_s=fault.ban_s)
            if fault.kind == "rate_limit":
                raise RetryableError("paper: 429 too many requests (injected)", retry_after_s=fault.retry_after_s)
            if fault.kind == "server_error":
                raise RetryableError("paper: 503 service unavailable (injected)")
            if fault.kind == "reject":
                raise OrderRejected("paper: order rejected (injected)")
            return fault

    def _check_weight_limit(self, now: float, weight: int) -> None:
        if self._weight_limit is None:
            return
        recent = self._recent_weight
        while recent and recent[0][0] <= now - self._weight_window_s:
            recent.popleft()
        used = sum(w for _, w in recent)
        recent.append((now, weight))
        if used + weight > self._weight_limit:
            self.rate_limited_calls += 1
            retry_after_s = recent[0][0] + self._weight_window_s - now
            raise RetryableError("paper: 429 request weight exceeded", retry_after_s=retry_after_s)

    def _take_fault(self, client_order_id: str | None) -> InjectedFault | None:
        for fault in self._faults:
            if fault.client_order_id in (None, client_order_id):
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
                return fault
        return None
