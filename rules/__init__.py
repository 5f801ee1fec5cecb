"""Update rules: plasticity rules, plastic networks, learned optimizers and
shared-parameter experts (VS-ML, Badger, MPLP).

Plasticity (`rules/plasticity.py`, `memory.py`, `clapp.py`):
`delta_w = rule(coefficients, pre, post, w)` with `w` of shape (n_post, n_pre).

Learned optimizers (`rules/lopt.py`, `meta.py`; task families in `rules.tasks`):
`lopt.init(key) -> meta_params`, `lopt.optax(meta_params)` an optax
`GradientTransformationExtraArgs` (the loss reaches the rule as `loss=`), and
`meta_train(lopt, family, ...)` with PES, checkpoints and exact resume.
"""

from . import tasks as tasks
from .badger import MPLP as MPLP
from .badger import Adjacency as Adjacency
from .badger import Attention as Attention
from .badger import Badger as Badger
from .badger import Dense as Dense
from .badger import GuessTarget as GuessTarget
from .badger import Ring as Ring
from .clapp import CLAPP as CLAPP
from .clapp import CLAPPLayer as CLAPPLayer
from .clapp import CLAPPMetrics as CLAPPMetrics
from .lopt import LearnableAdam as LearnableAdam
from .lopt import MLPLOpt as MLPLOpt
from .lopt import RNNMLPLOpt as RNNMLPLOpt
from .lopt import UnrolledTask as UnrolledTask
from .memory import HebbianMemory as HebbianMemory
from .meta import MetaTrainResult as MetaTrainResult
from .meta import load_checkpoint as load_checkpoint
from .meta import meta_train as meta_train
from .plasticity import ABCD as ABCD
from .plasticity import SHARING as SHARING
from .plasticity import VARIANTS as VARIANTS
from .plasticity import PlasticMLP as PlasticMLP
from .plasticity import Polynomial as Polynomial
from .plasticity import SparseHebbian as SparseHebbian
from .plasticity import oja as oja
from .vsml import VSML as VSML
from .vsml import VSMLLayer as VSMLLayer

__all__ = [
    # plasticity
    "ABCD", "SHARING", "VARIANTS", "Polynomial", "oja", "SparseHebbian", "HebbianMemory",
    "CLAPP", "CLAPPLayer", "CLAPPMetrics", "PlasticMLP",
    # learned optimizers
    "LearnableAdam", "MLPLOpt", "RNNMLPLOpt", "UnrolledTask", "meta_train",
    "MetaTrainResult", "load_checkpoint", "tasks",
    # shared-parameter experts
    "VSMLLayer", "VSML", "Badger", "Dense", "Ring", "Adjacency", "Attention", "MPLP",
    "GuessTarget",
]
