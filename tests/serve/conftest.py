"""Settings for the ember.serve tests: the ``slow`` marker (soak tests; they run only with EMBER_SLOW=1) and
the small models the ASGI tests serve (built once: the tests only read them)."""
import pytest

from .models import build_models


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("serve_models"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running soak tests, skipped unless EMBER_SLOW=1")
