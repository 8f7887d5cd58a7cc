"""Backend contracts: test classes that hold for every SQL store backend.

Each tier subclasses a contract and provides its `backend_settings` fixture: tests/unit runs
them on SQLite, tests/integration on Postgres. The classes are not collected here (their names
do not start with Test).
"""
