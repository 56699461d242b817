"""Deterministic identifiers: client order ids and position ids.

Venues de-duplicate client order ids, so an id that is a pure function of *what* is being ordered makes a
retry or a restart unable to place a second order. Every id here is at most 32 characters of ``[0-9a-z]``,
inside the limits of every venue we target (Binance 36 ``[.A-Z:/a-z0-9_-]``, Bybit 36, Bitget 40).

Formats (``S`` = signal id, ``U`` = user id, both in base 36):

* signal-driven order   ``c{S:13}u{U}{leg}``  e.g. ``c000000000001u2re``
* position              ``p{S:13}u{U}``       the position opened by signal ``S`` for user ``U``
* engine close          ``x{S:13}u{U}``       SL / TP / manual / liquidation: ONE id per position, so a
                                              position can be closed by the engine at most once

Why the signal id is zero-padded to 13 characters: base 36 uses every letter, including the ``u``
separator, so the unpadded ``c{S}u{U}`` is ambiguous (``c1u2u3e`` is both S=1,U="2u3" and S="1u2",U=3).
A fixed width makes the ids injective; 13 base-36 digits hold any id below 2**64. The leg is exactly one
letter, so the user part is everything between the separator and the last character.
"""

from __future__ import annotations

import re

__all__ = [
    "LEG_ORDER",
    "MAX_ID",
    "MAX_ID_LEN",
    "client_order_id",
    "close_order_id",
    "parse_client_order_id",
    "position_id_for",
]

MAX_ID = 2**64 - 1  # the largest signal / user id that fits 13 base-36 digits
MAX_ID_LEN = 32
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
