"""The `precision` fixture shared by the parity modules."""

import os

import pytest

from parity import problems as P


@pytest.fixture(params=P.PRECISIONS)
def precision(request):
    """The key cases run in float32, float64 and float64 with strict promotion."""
    if request.param == "float64" and os.environ.get("INNERLOOP_STRICT_DTYPES"):
        # The session's promotion is strict already: this case would repeat float64-strict.
        pytest.skip("under --strict-dtypes float64 is the float64-strict case")
    with P.precision_context(request.param) as spec:
        yield spec
