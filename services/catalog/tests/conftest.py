"""catalog's tests use the shared kit's fixtures (``embedded``, ``catalog``, ``merchant``,
``product`` ...: tests/kit/plugin.py) and its helpers (``tests.kit``)."""
