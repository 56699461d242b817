"""ccxt exceptions → the outcome classes of ``engine/venue.py``.

The split that matters is *was anything possibly accepted?* For ``create_order`` a timeout, a cut connection,
an HTTP 5xx or a body we cannot read means the order may exist: ``OutcomeUnknown``, never a retry. For
read-only calls the same faults are simply retryable.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import aiohttp
import ccxt.async_support as ccxt

from engine.venue import OrderRejected, OutcomeUnknown, RetryableError, VenueBanned, VenueError

__all__ = ["CredentialRejected", "classify", "sanitize"]

_BANNED_UNTIL = re.compile(r"banned until (\d{10,13})")
_QUERY = re.compile(r"\?[^\s\"']*")
# ccxt's message for an HTTP status it maps by code: "<exchange> <METHOD> <url> <status> <reason> <body>".
_HTTP_STATUS = re.compile(r"^\S+ [A-Z]+ \S+ (\d{3}) ")
_MAX_MESSAGE = 300
# Venue codes that refuse an order for good (nothing was placed) yet may reach the engine as ccxt's plain
# ExchangeError, which on create would read as "maybe accepted" (UNKNOWN, reconciled, never a definitive answer).
# Keyed by ccxt's exchange id, which starts ccxt's error message ("<id> <body>").
#   bitget 22002 "No position to close", 40757 "Not enough position is available." (reduce-only, one-way mode;
#     Bitget's error-code table and API update log of Oct 30 2023), 45006 "Insufficient position" (v1's code for
#     a reduce-only order on a flat position): ccxt 4.5 (ts/src/bitget.ts) maps none of them.
#   binance -2022 "ReduceOnly Order is rejected.": ccxt maps it (InvalidOrder) only in its USDⓈ-M table, which it
#     picks by host; on another host it is an ExchangeError.
#   bybit 110017 "Reduce-only rule not satisfied": InvalidOrder in ccxt (ts/src/bybit.ts); listed for the same
#     safety should a ccxt release drop it.
_REFUSAL_CODES: dict[str, frozenset[str]] = {
    "bitget": frozenset({"22002", "40757", "45006"}),
    "binance": frozenset({"-2022"}),
    "binanceusdm": frozenset({"-2022"}),
    "bybit": frozenset({"110017"}),
}
_BODY_CODE = re.compile(r'"(?:code|retCode)"\s*:\s*"?(-?\d+)')
_DEFAULT_BAN_S = 120.0


class CredentialRejected(OrderRejected):
    """The venue refused the account's API key or signature. Definitive until the credential is fixed."""


def sanitize(message: str, secrets: Iterable[str | None] = ()) -> str:
    """``message`` without query strings (signatures), without any of ``secrets``, and short."""
    text = _QUERY.sub("?…", message)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text[:_MAX_MESSAGE]


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _retry_after_s(headers: Mapping[str, str] | None, now_s: float) -> float | None:
    raw = _header(headers, "Retry-After")
    if raw is not None:
        try:
            return max(0.0, float(raw))
        except ValueError:
            return None
    # Bybit: X-Bapi-Limit-Reset-Timestamp (ms) when the per-UID limit is hit.
    reset_ms = _header(headers, "X-Bapi-Limit-Reset-Timestamp")
    if reset_ms is not None and reset_ms.isdigit():
        return max(0.0, int(reset_ms) / 1000 - now_s)
    return None


def _ban_s(message: str, headers: Mapping[str, str] | None, now_s: float) -> float:
    retry_after = _retry_after_s(headers, now_s)
    if retry_after is not None:
        return retry_after
    match = _BANNED_UNTIL.search(message)
    if match:
        until = int(match.group(1))
        until_s = until / 1000 if until > 10**11 else until
        return max(0.0, until_s - now_s)
    return _DEFAULT_BAN_S


def _is_server_error(exc: BaseException) -> bool:
    """Whether ccxt raised ``exc`` for an HTTP 5xx answer."""
    match = _HTTP_STATUS.match(str(exc))
    return match is not None and match.group(1).startswith("5")


def _is_venue_refusal(exc: BaseException) -> bool:
    """Whether ``exc`` carries a venue code of ``_REFUSAL_CODES`` for the venue that raised it."""
    venue, _, body = str(exc).partition(" ")
    codes = _REFUSAL_CODES.get(venue)
    match = _BODY_CODE.search(body) if codes else None
    return match is not None and codes is not None and match.group(1) in codes


def _is_ban(message: str) -> bool:
    # Binance: HTTP 418 with "banned until <ms>"; Bybit: HTTP 403 "access too frequent" (an IP ban).
    return " 418 " in message or "banned until" in message or "access too frequent" in message


def classify(
    exc: BaseException,
    *,
    order_sent: bool,
    now_s: float,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str | None] = (),
) -> VenueError:
    """The outcome class of ``exc``. ``order_sent``: the failing call was ``create_order`` (it may have been
    accepted). ``now_s``: the engine's wall time (epoch seconds), which a venue's "banned until" or reset
    timestamp is turned into a wait against. ``headers``: the last response headers ccxt saw, for Retry-After."""
    message = sanitize(f"{type(exc).__name__}: {exc}", secrets)
    if isinstance(exc, VenueError):
        return exc
    if _is_ban(str(exc)) and isinstance(exc, ccxt.NetworkError):
        return VenueBanned(message, ban_s=_ban_s(str(exc), headers, now_s))
    if isinstance(exc, ccxt.DDoSProtection | ccxt.RateLimitExceeded):
        if _is_ban(str(exc)):
            return VenueBanned(message, ban_s=_ban_s(str(exc), headers, now_s))
        return RetryableError(message, retry_after_s=_retry_after_s(headers, now_s))
    if isinstance(exc, ccxt.AuthenticationError):
        return CredentialRejected(message)
    if isinstance(
        exc,
        ccxt.InsufficientFunds
        | ccxt.InvalidOrder
        | ccxt.BadSymbol
        | ccxt.BadRequest
        | ccxt.OperationRejected
        | ccxt.NotSupported
        | ccxt.ArgumentsRequired,
    ):
        return OrderRejected(message)
    if isinstance(exc, ccxt.ExchangeError) and _is_venue_refusal(exc):
        return OrderRejected(message)
    if isinstance(exc, ccxt.ExchangeNotAvailable):
        cause = exc.__cause__
        if isinstance(cause, aiohttp.ClientConnectorError):
            # The connection was never made: nothing reached the venue.
            return RetryableError(message, retry_after_s=_retry_after_s(headers, now_s))
        if cause is None and not (order_sent and _is_server_error(exc)):
            # An error status or an "unavailable" code: a read can simply be asked again, and on create a 4xx or
            # a venue code says the request was not taken. A 5xx on create does not: Binance documents its
            # execution status as unknown (it may have filled).
            return RetryableError(message, retry_after_s=_retry_after_s(headers, now_s))
        # A 5xx on create, or the connection broke after the request went out: the order may exist. Binance
        # refuses a client order id only while its order is open, so a re-send of a filled order fills again.
        return OutcomeUnknown(message) if order_sent else RetryableError(message)
    if isinstance(exc, ccxt.NetworkError | ccxt.BadResponse | ccxt.ExchangeError):
        # Timeouts, disconnects, unreadable or unexpected bodies.
        return OutcomeUnknown(message) if order_sent else RetryableError(message)
    # Anything else (a parser tripping over garbage): never a crash.
    return OutcomeUnknown(message) if order_sent else RetryableError(message)
