"""Client order ids and position ids: deterministic, injective, within venue limits."""

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.ids import (
    MAX_ID_LEN,
    client_order_id,
    close_order_id,
    parse_client_order_id,
    position_id_for,
)

ids = st.integers(min_value=0, max_value=2**63)
legs = st.sampled_from("abcdefghijklmnopqrstuvwxyz")
VALID = re.compile(r"[0-9a-z]{1,32}")
# The strictest venue charset (Binance): ours must be a subset of it.
BINANCE = re.compile(r"[.A-Z:/a-z0-9_-]{1,36}")


def test_examples() -> None:
    assert client_order_id(1, 2) == "c0000000000001u2e"
    assert position_id_for(1, 2) == "p0000000000001u2"
    assert close_order_id("p0000000000001u2") == "x0000000000001u2"
    assert client_order_id(36, 35, "x") == "c0000000000010uzx"


def test_unpadded_form_would_collide_but_ours_does_not() -> None:
    # c{1}u{2u3} vs c{1u2}u{3}: base 36 contains the separator letter.
    assert client_order_id(1, int("2u3", 36)) != client_order_id(int("1u2", 36), 3)


@given(ids, ids, legs)
def test_client_order_id_valid_and_roundtrips(signal_id: int, user_id: int, leg: str) -> None:
    coid = client_order_id(signal_id, user_id, leg)
    assert VALID.fullmatch(coid) and BINANCE.fullmatch(coid)
    assert len(coid) <= MAX_ID_LEN
    assert parse_client_order_id(coid) == (signal_id, user_id, leg)


@given(ids, ids, legs, ids, ids, legs)
def test_client_order_id_injective(s1: int, u1: int, l1: str, s2: int, u2: int, l2: str) -> None:
    if (s1, u1, l1) != (s2, u2, l2):
        assert client_order_id(s1, u1, l1) != client_order_id(s2, u2, l2)


@given(ids, ids, ids, ids)
def test_position_and_close_ids_injective_and_valid(s1: int, u1: int, s2: int, u2: int) -> None:
    p1, p2 = position_id_for(s1, u1), position_id_for(s2, u2)
    x1 = close_order_id(p1)
    assert VALID.fullmatch(p1) and VALID.fullmatch(x1) and len(x1) <= MAX_ID_LEN
    assert (p1 == p2) == ((s1, u1) == (s2, u2))
    assert (x1 == close_order_id(p2)) == (p1 == p2)
    # Engine closes never collide with signal-driven orders.
    assert x1 != client_order_id(s1, u1)


def test_bad_inputs() -> None:
    with pytest.raises(ValueError):
        client_order_id(-1, 1)
    with pytest.raises(ValueError):
        client_order_id(1, 1, "E")
    with pytest.raises(ValueError):
        client_order_id(1, 1, "ee")
    with pytest.raises(ValueError):
        client_order_id(2**64, 1)
    with pytest.raises(ValueError):
        close_order_id("c0000000000001u2e")
    with pytest.raises(ValueError):
        parse_client_order_id("x0000000000001u2")
