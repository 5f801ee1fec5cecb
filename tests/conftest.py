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
# Most of the suite's time is XLA compilation: skip LLVM's costly passes (the HLO, hence what
# is computed, is unchanged; read before the backend starts; subprocesses inherit it).
_FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()

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


# The slowest tests of the CI tier (both passes' --durations, slowest first) run first:
# collected last (tests/test_*.py), they ended a pass with one xdist worker idle.
SLOW_FIRST = [
    "tests/test_benchmarks.py::test_fixed_point_benchmark_quick",
    "tests/rules/test_learned_optimizer_benchmark.py::test_learned_optimizer_benchmark_quick",
    "tests/test_notebooks.py::test_notebook_executes[04_plasticity.ipynb]",
    "tests/rules/test_bandit.py::test_experiment_quick",
    "tests/rules/test_vsml.py::test_vsml_benchmark_quick",
    "tests/test_notebooks.py::test_notebook_executes[05_badger.ipynb]",
    "tests/rules/test_badger.py::test_benchmark_quick[lifelong.py",
    "tests/test_benchmarks.py::test_fixed_point_benchmark_fails_when_an_innerloop_row_fails",
    "tests/test_notebooks.py::test_notebook_executes[01_deq.ipynb]",
    "tests/test_notebooks.py::test_notebook_executes[03_learned_optimizer.ipynb]",
    "tests/rules/test_badger.py::test_benchmark_quick[badger.py",
    "tests/solvers/test_solvers.py::test_mixing_coefficients_are_finite_and_sum_to_one_for_",
    "tests/rules/test_plasticity_experiments.py::test_oja_benchmark_quick",
    "tests/rules/test_plasticity_experiments.py::test_hebbian_cartpole_benchmark_quick",
    "tests/rules/test_badger.py::test_sharded_and_single_device_meta_training_agree",
    "tests/test_cli.py::test_quick_demo_holds_the_claim_and_writes_png_and_json",
    "tests/rules/test_byol.py::test_step_under_jit_and_vmap_over_seeds_is_the_rule",
    "tests/test_notebooks.py::test_notebook_executes[02_unrolls.ipynb]",
    "tests/test_unroll_benchmark.py::",  # subprocess runs, collected last of all
]


def _slow_rank(item):
    return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)),
                len(SLOW_FIRST))


def pytest_collection_modifyitems(config, items):
    items.sort(key=_slow_rank)  # stable: the other tests keep their order
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
