"""Update rules: learned optimizers, plasticity rules, shared-parameter experts.

Nothing is public here yet; see the open issues for what this room will hold.
"""

__all__: list[str] = []
