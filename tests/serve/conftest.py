"""Settings for the ember.serve tests: the ``slow`` marker (soak tests; they run only with EMBER_SLOW=1) and
the small models the ASGI tests serve (built once: the tests only read them)."""
import pytest

from .models import build_models
from .repo_helpers import make_repo


@pytest.fixture(scope="session")
def models(tmp_path_factory):
    return build_models(tmp_path_factory.mktemp("serve_models"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long-running soak tests, skipped unless EMBER_SLOW=1")


@pytest.fixture
def repo(tmp_path):
    """<tmp>/repo with models a and b, versions 1, 2, 3 of each (different weights per version)."""
    return make_repo(tmp_path / "repo")
