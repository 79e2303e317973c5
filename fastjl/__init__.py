"""fastjl: fast, device-independent random projections of per-example gradients.

    >>> import torch, fastjl
    >>> y = fastjl.project(torch.randn(8, 10_000), 512, seed=0)   # (8, 512) float32

See README.md and ``fastjl.spec`` for the projection contract (spec v1).
"""

from ._backends import backends
from ._backends.torch_backend import block_budget, set_block_budget
from .project import project
from .projector import Projector
from .spec import KINDS, SPEC_VERSION, matrix_block

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "SPEC_VERSION",
    "Projector",
    "backends",
    "block_budget",
    "matrix_block",
    "project",
    "set_block_budget",
]
