"""Helpers shared by every test folder; always imported as ``tests.support.<module>`` (one module object each)."""
