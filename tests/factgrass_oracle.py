"""An independent, scalar, pure-Python statement of FactGraSS (``fastjl.factgrass_spec``),
written from its docstring with plain integers, the scalar Philox of ``philox_oracle`` and the
sjlt rows of ``sparse_oracle``."""

from .philox_oracle import philox
from .sparse_oracle import sjlt_row

FACTOR = {"in": 0, "out": 1}


def mask_key(seed, offset, factor, j):
    r = philox((j, offset % 2**32, offset // 2**32 + FACTOR[factor] * 2**16, 5), (seed % 2**32, seed // 2**32))
    return r[0] * 2**31 + r[1] // 2


def kept(seed, offset, factor, dim, keep):
    """The ``keep`` coordinates of smallest key (ties: smaller j first), increasing."""
    return sorted(sorted(range(dim), key=lambda j: (mask_key(seed, offset, factor, j), j))[:keep])


def factgrass_entries(seed, offset, d_out, d_in, proj_dim, k_out, k_in, s, bias):
    """``{(gradient row, column): sign}``: the nonzeros of the layer's matrix in
    ``[G.flatten(), Σ_t g]`` layout."""
    outs = kept(seed, offset, "out", d_out, k_out)
    ins = kept(seed, offset, "in", d_in + (1 if bias else 0), k_in)
    entries = {}
    for p, o in enumerate(outs):
        for q, i in enumerate(ins):
            source = d_out * d_in + o if i == d_in else o * d_in + i
            for column, sign in sjlt_row(seed, offset + p * k_in + q, proj_dim, s).items():
                entries[(source, column)] = sign
    return entries
