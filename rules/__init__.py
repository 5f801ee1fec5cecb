"""Update rules: plasticity rules and plastic networks (learned optimizers and
shared-parameter experts are still to come; see the open issues).

Plasticity (`rules/plasticity.py`): `delta_w = rule(coefficients, pre, post, w)` with
`w` of shape (n_post, n_pre).
"""

from .clapp import CLAPP as CLAPP
from .clapp import CLAPPLayer as CLAPPLayer
from .clapp import CLAPPMetrics as CLAPPMetrics
from .memory import HebbianMemory as HebbianMemory
from .plasticity import ABCD as ABCD
from .plasticity import SHARING as SHARING
from .plasticity import VARIANTS as VARIANTS
from .plasticity import PlasticMLP as PlasticMLP
from .plasticity import Polynomial as Polynomial
from .plasticity import SparseHebbian as SparseHebbian
from .plasticity import oja as oja

__all__ = ["ABCD", "CLAPP", "CLAPPLayer", "CLAPPMetrics", "HebbianMemory", "SHARING", "VARIANTS", "PlasticMLP", "Polynomial", "SparseHebbian",
           "oja"]
