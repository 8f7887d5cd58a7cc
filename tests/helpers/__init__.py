"""Test data and repository builders behind the fixtures of the conftest files.

Test modules receive these as fixtures (tests/conftest.py, tests/integration/conftest.py) and
never import them; only the conftest files and code that runs in a child process (which has no
fixtures) import from here.
"""
