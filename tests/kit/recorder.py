"""Recorders: stand-ins for actor references that record what they are told.

``Recorder`` is a plain object with ``tell`` (what a component holding a ref calls): cheap, and a test can read
what arrived at once. ``RecorderActor`` is a real pykka actor that tells a ``Recorder`` what it receives, for
code that needs an ``ActorRef`` (``stop``, ``proxy``, ``is_alive``)::

    log = Recorder()
    persistence = RecorderActor.start(log, "persistence")  # records ("persistence", message)
    ...
    name, intent = log.wait(1)[0]
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

from tests.kit.waiting import GENEROUS_S


class Recorder:
    """Records every message told to it, in order (thread-safe); ``wait(n)`` blocks until n have arrived."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._messages: list[Any] = []

    def tell(self, message: Any) -> None:
        with self._cond:
            self._messages.append(message)
            self._cond.notify_all()

    @property
    def messages(self) -> list[Any]:
        """A copy of what arrived so far."""
        with self._cond:
            return list(self._messages)

    def of_type(self, kind: type[Any]) -> list[Any]:
        return [m for m in self.messages if isinstance(m, kind)]

    def wait(self, count: int, timeout_s: float = GENEROUS_S) -> list[Any]:
        """Block until at least ``count`` messages arrived; return them all."""
        return self.wait_until(lambda messages: len(messages) >= count, timeout_s, f"{count} messages")

    def wait_until(
        self, predicate: Callable[[list[Any]], bool], timeout_s: float = GENEROUS_S, what: str = ""
    ) -> list[Any]:
        """Block until ``predicate(messages)`` holds (checked at each arrival); return the messages."""
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self._messages), timeout_s):
                raise AssertionError(f"not within {timeout_s}s: {what or predicate}; got {len(self._messages)}")
            return list(self._messages)


class RecorderActor(pykka.ThreadingActor):
    """A pykka actor that tells ``recorder`` each message it receives (as ``(name, message)`` when named, so one
    recorder shared by several actors shows the order across them)."""

    def __init__(self, recorder: Recorder, name: str | None = None) -> None:
        super().__init__()
        self._recorder, self._name = recorder, name

    def on_receive(self, message: Any) -> None:
        self._recorder.tell(message if self._name is None else (self._name, message))
