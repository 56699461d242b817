"""Identifiers: how every id in the engine is built, and the deterministic ones built here.

Venues de-duplicate client order ids, so an id that is a pure function of *what* is being ordered makes a
retry or a restart unable to place a second order. Every client order id and position id is at most 32
characters of ``[0-9a-z]``, inside the limits of every venue we target (Binance 36 ``[.A-Z:/a-z0-9_-]``,
Bybit 36, Bitget 40).

Built here (``S`` = signal id, ``U`` = user id, both in base 36; ``N`` = close attempt in base 36):

* signal-driven order   ``c{S:13}u{U}{leg}``  e.g. ``c000000000001u2re``; the leg is one letter, ``e`` for the
                                              one order a signal causes (entry, increase, reduce or close)
* position              ``p{S:13}u{U}``       the position opened by signal ``S`` for user ``U`` (increases
                                              keep it)
* engine close          ``x{S:13}u{U}``       SL / TP / manual / liquidation: the first attempt's id. ONE id
                                              per attempt and attempts counted per position, so a position is
                                              closed by the engine at most once per attempt
* engine close, again   ``r{N:4}{S:13}u{U}``  attempt ``N`` (1 .. 36**4-1) after an attempt ended without
                                              closing everything (rejected, failed, or filled in part): the
                                              venue would answer a spent id with the old order

Why the signal id is zero-padded to 13 characters: base 36 uses every letter, including the ``u``
separator, so the unpadded ``c{S}u{U}`` is ambiguous (``c1u2u3e`` is both S=1,U="2u3" and S="1u2",U=3).
A fixed width makes the ids injective; 13 base-36 digits hold any id below 2**64. The leg is exactly one
letter, so the user part is everything between the separator and the last character. Start-up recovery
tells an engine close from a signal's reduce by the first letter (``x`` or ``r``).

Built elsewhere:

* signal id, user id, whale id: ``bigint`` identity columns (``whale_signals.id``, ``users.id``, ``whales.id``);
  a signal's ``external_id`` is the detector's own (unique), ``demo-{16 hex}`` for the demo's signals
* domain event id       ``{event_type}:{key}...`` (``engine/events.py``): the event's tag and its natural key
                        (e.g. ``trade_executed:c000000000001u2re``), so a replayed fact is inserted once
* portfolio snapshot    no id of its own: ``(user_id, taken_at)`` is the key (a day close is stamped at the
                        day's last microsecond, ``engine/portfolio.py``)
* exchange order id     the venue's; the paper venue's ``paper-{n}``, the emulator's ``{n}`` from 100000001
                        (and ``emu{n}`` as the client id of an order sent without one)
* actor URN             ``urn:uuid:`` + a per-process random prefix and a 48-bit counter (``engine/runtime.py``)
* exchange-actor job id a counter per exchange actor (pairs a venue call with its result; never leaves it)
"""

from __future__ import annotations

import re

__all__ = [
    "CLOSE_ATTEMPTS_MAX",
    "LEG_ORDER",
    "MAX_ID",
    "MAX_ID_LEN",
    "client_order_id",
    "close_attempt_id",
    "close_order_id",
    "parse_client_order_id",
    "position_id_for",
]

MAX_ID = 2**64 - 1  # the largest signal / user id that fits 13 base-36 digits
MAX_ID_LEN = 32
CLOSE_ATTEMPTS_MAX = 36**4 - 1  # the last engine close attempt of a position that has an id (``r{N:4}...``)
LEG_ORDER = "e"  # the one order a signal causes for a user (entry, increase, reduce or close)

_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"
_SIGNAL_WIDTH = 13
_CLIENT_RE = re.compile(r"c([0-9a-z]{13})u([0-9a-z]+)([a-z])")
_POSITION_RE = re.compile(r"p([0-9a-z]{13})u([0-9a-z]+)")


def _base36(value: int) -> str:
    if not 0 <= value <= MAX_ID:
        raise ValueError(f"id out of range [0, 2**64): {value}")
    if value == 0:
        return "0"
    digits: list[str] = []
    while value:
        value, rem = divmod(value, 36)
        digits.append(_ALPHABET[rem])
    return "".join(reversed(digits))


def client_order_id(signal_id: int, user_id: int, leg: str = LEG_ORDER) -> str:
    """The client order id of the order ``signal_id`` causes for ``user_id``; ``leg`` is one letter a-z."""
    if len(leg) != 1 or leg not in _ALPHABET[10:]:
        raise ValueError(f"leg must be one letter a-z, got {leg!r}")
    return f"c{_base36(signal_id).rjust(_SIGNAL_WIDTH, '0')}u{_base36(user_id)}{leg}"


def parse_client_order_id(value: str) -> tuple[int, int, str]:
    """``(signal_id, user_id, leg)`` of a signal-driven client order id; ``ValueError`` if it is not one."""
    match = _CLIENT_RE.fullmatch(value)
    if match is None:
        raise ValueError(f"not a signal client order id: {value!r}")
    return int(match[1], 36), int(match[2], 36), match[3]


def position_id_for(signal_id: int, user_id: int) -> str:
    """The id of the position that signal ``signal_id`` opens for ``user_id`` (increases keep it)."""
    return f"p{_base36(signal_id).rjust(_SIGNAL_WIDTH, '0')}u{_base36(user_id)}"


def close_order_id(position_id: str) -> str:
    """The client order id of the engine-initiated close of ``position_id`` (SL, TP, manual, liquidation).

    All engine closes of one position share this id, so the venue accepts only the first of them.
    """
    if _POSITION_RE.fullmatch(position_id) is None:
        raise ValueError(f"not a position id: {position_id!r}")
    return f"x{position_id[1:]}"


def close_attempt_id(position_id: str, attempt: int) -> str:
    """The client order id of engine close attempt ``attempt`` of ``position_id``: attempt 0 is
    ``close_order_id``; later attempts (after one ended without closing everything) ``r{n:4}{position}``: four
    base-36 digits, a fixed width so that no two (attempt, position) pairs share an id, and at most 32
    characters with the longest position id."""
    if attempt == 0:
        return close_order_id(position_id)
    if not 0 < attempt <= CLOSE_ATTEMPTS_MAX:
        raise ValueError(f"close attempt out of range [0, {CLOSE_ATTEMPTS_MAX}]: {attempt}")
    digits = ""
    for _ in range(4):
        attempt, rem = divmod(attempt, 36)
        digits = _ALPHABET[rem] + digits
    return f"r{digits}{position_id[1:]}"
