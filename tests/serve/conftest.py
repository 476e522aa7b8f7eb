"""Settings for the ember.serve tests: the ``slow`` marker (soak tests; they run only with EMBER_SLOW=1)."""


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running soak tests, skipped unless EMBER_SLOW=1")
