"""The engine's tests. A package so that ``tests.kit`` (the shared test kit) is importable from tests and bench."""
