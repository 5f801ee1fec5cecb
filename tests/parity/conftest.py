"""The `precision` fixture shared by the parity modules."""

import pytest

from parity import problems as P


@pytest.fixture(params=P.PRECISIONS)
def precision(request):
    """The key cases run in float32, float64 and float64 with strict promotion."""
    with P.precision_context(request.param) as spec:
        yield spec
