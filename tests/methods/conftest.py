"""The method tests run tiny models, fastest on one thread (tests/conftest.py single_thread)."""
import pytest


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    yield
