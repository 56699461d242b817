"""Moved to ``tests.kit``: this shim keeps imports of branches made before the move working; removed soon."""

from tests.kit import *  # noqa: F403
