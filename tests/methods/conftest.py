"""The method tests run tiny models, fastest on one thread (tests/helpers.one_thread)."""
import pytest

from tests.helpers import one_thread


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    with one_thread():
        yield
