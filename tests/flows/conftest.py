import pytest


@pytest.fixture(autouse=True)
def _float64(x64):
    """The flows' property tests are stated in float64 (round trips within 1e-5)."""
    yield
