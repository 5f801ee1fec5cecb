"""Test configuration: hypothesis profiles and the --slow tier.

Float32 means float32: matmuls run at precision "highest" (`jax_default_matmul_precision`,
also exported to the subprocesses some tests start). On CPU that changes nothing; on an
NVIDIA GPU JAX's default float32 matmul is TF32 (10-bit mantissa), whose ~1e-3 rounding
keeps a float32 fixed-point residual above the suite's tolerances (1e-4 to 1e-5).

Profiles: `ci` (default when CI is set: few examples, the whole suite in minutes on
2 cores), `dev` (the default otherwise), `deep` (selected by --slow: many examples).

`--strict-dtypes` (or INNERLOOP_STRICT_DTYPES=1) runs the session with float64 enabled
and `jax_numpy_dtype_promotion="strict"`, the configuration optimistix tests under:
any implicit promotion between dtypes is then an error.
"""

import os

import jax
import pytest
from hypothesis import HealthCheck, settings

os.environ["JAX_DEFAULT_MATMUL_PRECISION"] = "highest"
jax.config.update("jax_default_matmul_precision", "highest")

_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                     HealthCheck.data_too_large,
                                                     HealthCheck.function_scoped_fixture],
               derandomize=False, print_blob=True)
settings.register_profile("ci", max_examples=6, **_common)
settings.register_profile("dev", max_examples=12, **_common)
settings.register_profile("deep", max_examples=100, **_common)


def pytest_addoption(parser):
    parser.addoption("--slow", action="store_true", default=False,
                     help="run the slow tier and the deep hypothesis profile")
    parser.addoption("--strict-dtypes", action="store_true", default=False,
                     help="float64 enabled and strict dtype promotion for the session")


def pytest_configure(config):
    if config.getoption("--strict-dtypes") or os.environ.get("INNERLOOP_STRICT_DTYPES"):
        os.environ["INNERLOOP_STRICT_DTYPES"] = "1"  # inherited by subprocesses
        jax.config.update("jax_enable_x64", True)
        jax.config.update("jax_numpy_dtype_promotion", "strict")
    if config.getoption("--slow"):
        settings.load_profile("deep")
    else:
        settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE",
                                             "ci" if os.environ.get("CI") else "dev"))


def pytest_collection_modifyitems(config, items):
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason="slow tier: run with --slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def x64():
    """Run the test body with float64 enabled (float32 tests stay float32)."""
    with jax.enable_x64(True):
        yield
