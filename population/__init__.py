"""Learning dynamics of populations: games, equilibria, ratings, population training
and quality-diversity archives, as pure JAX functions that `jit`, `vmap` over many games
and differentiate through equilibria with the implicit function theorem.

Following "Designing Learning Dynamics" (Garnelo, Balduzzi and Czarnecki, NeurIPS 2020
tutorial): a population's members meet in pairwise zero-sum games; with no absolute
fitness they are rated against each other (Elo, Nash averaging, alpha-Rank); the Nash
equilibrium of the meta-game chooses whom to train against (PSRO); a quality-diversity
archive keeps the best member of each behaviour niche (MAP-Elites).

Builds on `innerloop.implicit` (`fixed_point`, `argmin`, `ES`) only.
"""

# Each module's public names, one block per module.

# equilibria (_equilibria.py)
from innerloop.population._equilibria import PDHG as PDHG
from innerloop.population._equilibria import AbstractGameSolver as AbstractGameSolver
from innerloop.population._equilibria import Equilibrium as Equilibrium
from innerloop.population._equilibria import exploitability as exploitability
from innerloop.population._equilibria import nash as nash

__all__: list[str] = []
__all__ += [  # equilibria (_equilibria.py)
    "AbstractGameSolver", "Equilibrium", "PDHG", "exploitability", "nash",
]
