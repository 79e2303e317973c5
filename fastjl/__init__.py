"""fastjl: fast, device-independent random projections of per-example gradients.

    >>> import torch, fastjl
    >>> y = fastjl.project(torch.randn(8, 10_000), 512, seed=0)   # (8, 512) float32

See README.md and ``fastjl.spec`` for the projection contract (spec v1).
"""

from ._backends import backends
from ._backends.torch_backend import block_budget, set_block_budget
from .kronecker import kronecker_factors
from .linear import project_linear
from .project import project
from .project_rows import project_rows
from .projector import Projector
from .sparse import project_transpose
from .sparse_spec import SPARSE_KINDS, SPARSITIES, sparse_matrix_block
from .spec import KINDS, LINEAR_KINDS, SPEC_VERSION, kronecker_factor, matrix_block

__version__ = "0.1.0"

__all__ = [
    "KINDS",
    "LINEAR_KINDS",
    "SPARSE_KINDS",
    "SPARSITIES",
    "SPEC_VERSION",
    "Projector",
    "backends",
    "block_budget",
    "kronecker_factor",
    "kronecker_factors",
    "matrix_block",
    "project",
    "project_rows",
    "project_linear",
    "project_transpose",
    "set_block_budget",
    "sparse_matrix_block",
]
