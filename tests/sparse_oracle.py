"""An independent, scalar, pure-Python statement of the sparse kinds (``fastjl.sparse_spec``),
written from its docstring with plain integers and the scalar Philox of ``philox_oracle``."""

from .philox_oracle import philox


def _word(seed, index, c2, domain):
    g = index // 4
    return philox((g % 2**32, g // 2**32, c2, domain), (seed % 2**32, seed // 2**32))[index % 4]


def sjlt_row(seed, i, proj_dim, s):
    """``{column: sign}`` of sjlt row ``i``."""
    row = {}
    for t in range(s):
        w = _word(seed, i * s + t, s, 2)
        lo, hi = t * proj_dim // s, (t + 1) * proj_dim // s
        row[lo + (w // 2) * (hi - lo) // 2**31] = 1 - 2 * (w % 2)
    return row


def grass_kept(seed, i, mask_rate):
    return _word(seed, i, 0, 4) < int(mask_rate * 2**32)
