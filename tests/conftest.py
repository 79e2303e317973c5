"""Test session setup.

Without a GPU, Triton kernels run in Triton's interpreter on CPU tensors.  ``triton.jit``
reads TRITON_INTERPRET when fastjl's kernels module is first imported, so it is set here,
before any test runs.  With a GPU the real kernels are compiled and tested instead.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
