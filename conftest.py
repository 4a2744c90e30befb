"""Loads the shared test kit's fixtures (tests/kit/plugin.py) for every test, in tests/ and
in services/<svc>/tests/ alike."""
pytest_plugins = ["tests.kit.plugin"]
