"""A DEQ classifier on digits, trained under every gradient mode and compared.

`python -m innerloop demo` trains a small deep-equilibrium classifier on
scikit-learn's digits (8x8 images, 10 classes; a fixed stratified 80/20 split) once
per gradient mode, from the same initialisation and with the same batch order, and
compares the modes side by side: test accuracy, wall time per training step (a warm
call of the `jax.jit` step, as users call it; the first call with its compilation
apart), forward iterations, backward cost (for `Implicit`, the adjoint iterations of
the mode it trained with) and the XLA temporary memory of the jitted training step
(also at several `max_steps`: flat for `Implicit`, growing for `Unroll`). A second
comparison trains `Implicit` with Jacobian regularisation. Writes `demo.png` and
`demo.json` to `--out`. A run of at least 100 steps fails (exit status 1) unless
`Implicit` ends above 0.95 test accuracy; `--quick` is the shortest such run.

    python -m innerloop demo                       # all five modes, about a minute
    python -m innerloop demo --quick               # Implicit and JacobianFree, 100 steps
    python -m innerloop demo --modes implicit,unroll --steps 200 --out /tmp/deq

The model: u = W_in x + b (the injection, computed once per call),
z* = tanh(W z* + u) (the cell; W is rescaled to Frobenius norm <= 2 so that training
cannot drift far from a contraction), logits = W_out z* + b_out."""

from innerloop.demo._config import ADJOINT_MAX_STEPS as ADJOINT_MAX_STEPS
from innerloop.demo._config import BATCH as BATCH
from innerloop.demo._config import CLAIM_ACC as CLAIM_ACC
from innerloop.demo._config import CLAIM_STEPS as CLAIM_STEPS
from innerloop.demo._config import DEFAULT_OUT as DEFAULT_OUT
from innerloop.demo._config import DEFAULT_STEPS as DEFAULT_STEPS
from innerloop.demo._config import EVAL_EVERY as EVAL_EVERY
from innerloop.demo._config import HIDDEN as HIDDEN
from innerloop.demo._config import JAC_WEIGHT as JAC_WEIGHT
from innerloop.demo._config import LEARNING_RATE as LEARNING_RATE
from innerloop.demo._config import MAX_STEPS as MAX_STEPS
from innerloop.demo._config import MEMORY_MAX_STEPS as MEMORY_MAX_STEPS
from innerloop.demo._config import MODES as MODES
from innerloop.demo._config import PHANTOM_DAMPING as PHANTOM_DAMPING
from innerloop.demo._config import PHANTOM_K as PHANTOM_K
from innerloop.demo._config import QUICK_MODES as QUICK_MODES
from innerloop.demo._config import SOLVERS as SOLVERS
from innerloop.demo._config import SPLIT_SEED as SPLIT_SEED
from innerloop.demo._config import TOL as TOL
from innerloop.demo._config import TRUNCATED_K as TRUNCATED_K
from innerloop.demo._config import WEIGHT_CAP as WEIGHT_CAP
from innerloop.demo._flags import add_arguments as add_arguments
from innerloop.demo._flags import build_parser as build_parser
from innerloop.demo._flags import main as main
from innerloop.demo._measure import adjoint_cost as adjoint_cost
from innerloop.demo._measure import residual_trace as residual_trace
from innerloop.demo._model import Cell as Cell
from innerloop.demo._model import Classifier as Classifier
from innerloop.demo._model import forward_only as forward_only
from innerloop.demo._model import load_digits_split as load_digits_split
from innerloop.demo._model import make_grad as make_grad
from innerloop.demo._model import make_model as make_model
from innerloop.demo._model import make_solver as make_solver
from innerloop.demo._model import with_config as with_config
from innerloop.demo._report import BACKWARD as BACKWARD
from innerloop.demo._report import format_table as format_table
from innerloop.demo._report import save_figure as save_figure
from innerloop.demo._run import check_claim as check_claim
from innerloop.demo._run import run as run
from innerloop.demo._train import evaluate as evaluate
from innerloop.demo._train import make_optimizer as make_optimizer
from innerloop.demo._train import make_step as make_step
from innerloop.demo._train import step_ms as step_ms
from innerloop.demo._train import step_temp_bytes as step_temp_bytes
from innerloop.demo._train import train as train

__all__ = [
    "ADJOINT_MAX_STEPS",
    "BATCH",
    "CLAIM_ACC",
    "CLAIM_STEPS",
    "DEFAULT_OUT",
    "DEFAULT_STEPS",
    "EVAL_EVERY",
    "HIDDEN",
    "JAC_WEIGHT",
    "LEARNING_RATE",
    "MAX_STEPS",
    "MEMORY_MAX_STEPS",
    "MODES",
    "PHANTOM_DAMPING",
    "PHANTOM_K",
    "QUICK_MODES",
    "SOLVERS",
    "SPLIT_SEED",
    "TOL",
    "TRUNCATED_K",
    "WEIGHT_CAP",
    "add_arguments",
    "build_parser",
    "main",
    "adjoint_cost",
    "residual_trace",
    "Cell",
    "Classifier",
    "forward_only",
    "load_digits_split",
    "make_grad",
    "make_model",
    "make_solver",
    "with_config",
    "BACKWARD",
    "format_table",
    "save_figure",
    "check_claim",
    "run",
    "evaluate",
    "make_optimizer",
    "make_step",
    "step_ms",
    "step_temp_bytes",
    "train",
]
