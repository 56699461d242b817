"""The one JSON encoding policy: log lines, admin replies and the rows sent to PostgreSQL.

orjson encodes the builtins itself (``datetime`` as RFC 3339, enums as their value, UUIDs as strings); for the rest
it calls ``default`` here, which says:

* ``Decimal``: a JSON **string** in plain notation with every digit kept — ``format(d, "f")``: ``"0.00000001"``
  (never ``"1E-8"``), ``"1.500"`` (the trailing zero stays), ``"NaN"``/``"Infinity"`` as such. Never a float, which
  would round money. PostgreSQL reads the string into a ``NUMERIC`` (``json_to_recordset`` / ``->>`` casts), so
  the database gets the exact value.
* a msgspec ``Struct``: its fields (``msgspec.to_builtins``; its Decimals again by the rule above).
* a ``set``/``frozenset``: a sorted list (by value, or by text when the members do not compare).
* an exception: ``"TypeName: message"``.
* anything else: ``str(value)`` for logs and admin replies (a line must never fail to print); the database encoder
  (``strict=True``) raises ``TypeError`` instead, so an unexpected object is never stored as its repr.

One path does not come through here: the persistence actor's batched lane encodes its row Structs with msgspec
(``actors/persistence_sql.py``, ``decimal_format="string"``: ``str(d)``, so ``"1E-8"`` there) for speed. Those
strings only go into ``NUMERIC`` columns, where both notations are the same number.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import orjson

__all__ = ["default", "dumps", "strict_default"]

_UNKNOWN = object()


def _known(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, msgspec.Struct):
        return msgspec.to_builtins(value, builtin_types=(Decimal,))  # its Decimals come back here
    if isinstance(value, set | frozenset):
        try:
            return sorted(value)
        except TypeError:
            return sorted(value, key=str)
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {value}"
    return _UNKNOWN


def default(value: Any) -> Any:
    """orjson's ``default`` for logs and admin replies: the policy above, ``str`` for an unknown type."""
    known = _known(value)
    return str(value) if known is _UNKNOWN else known


def strict_default(value: Any) -> Any:
    """orjson's ``default`` for stored JSON: the policy above, ``TypeError`` for an unknown type."""
    known = _known(value)
    if known is _UNKNOWN:
        raise TypeError(f"not JSON serialisable: {type(value).__name__}")
    return known


def dumps(value: Any, *, option: int = 0, strict: bool = False) -> bytes:
    """``value`` as JSON bytes under the policy above (``option``: orjson's ``OPT_*`` flags)."""
    return orjson.dumps(value, default=strict_default if strict else default, option=option)
