"""The sm_90a (wgmma) kernel's shared-memory layouts, descriptors and fragments, on the CPU.

``_C.wgmma_host_stage`` runs the kernel's own tile writers (project_tiles.cuh, the same
functions the mma.sync kernel uses) with the wgmma layouts of csrc/wgmma_layouts.cuh, and
returns the shared-memory bytes, the matrix descriptors the kernel issues and its fragment
maps.  This file reads those bytes back the way the PTX ISA says wgmma does -- decoding each
descriptor's bit fields and walking its canonical layout ("Shared Memory Matrix Layout",
"Matrix Descriptor Format"), written out here independently of the C++ -- and checks that
every element of every operand is the right entry of x or of the spec's P.  The accumulator
fragment (ISA "Matrix Fragments for wgmma.mma_async.m64nNk16") is emulated here too, and the
epilogue's store map must put every product where it belongs.  What only a GPU can check
(the instructions themselves) is in tests/test_cuda_wgmma.py.
"""

from __future__ import annotations

import pytest
import torch

from fastjl.spec import matrix_block

from .helpers import extension_or_skip_module

_C = extension_or_skip_module()

DTYPE_CODES = {torch.float16: 1, torch.bfloat16: 2}
SEED = 2**64 - 3
BLOCK_D, BLOCK_N = 32, 128
CONFIG_ROWS = {1: 64, 2: 128}  # project_plan.cuh: config 1 = B64, 2 = B128


# --------------------------------------------------------------------------- the PTX ISA, in Python


def decode(desc: int) -> dict:
    """Matrix descriptor bit fields (ISA "Matrix Descriptor Format"), byte values."""
    return {
        "start": (desc & 0x3FFF) << 4,
        "lbo": ((desc >> 16) & 0x3FFF) << 4,
        "sbo": ((desc >> 32) & 0x3FFF) << 4,
        "base_offset": (desc >> 49) & 0x7,
        "swizzle": desc >> 62,
        "reserved": desc & ~((0x3FFF) | (0x3FFF << 16) | (0x3FFF << 32) | (0x7 << 49) | (0x3 << 62)),
    }


SWIZZLE_BITS = {0: 0, 1: 3, 2: 2, 3: 1}  # mode -> B of Swizzle<B,4,3>: none, 128B, 64B, 32B


def swizzle(addr: int, mode: int) -> int:
    b = SWIZZLE_BITS[mode]
    return addr ^ (((addr >> 7) & ((1 << b) - 1)) << 4)


def k_major_offset(d: dict, row: int, k: int) -> int:
    """Byte address of (row, k) of a K-major operand of 16-bit elements (T = 8):
    none: ((8,m),(T,2k)):((1T,SBO),(1,LBO)); swizzled (W-byte rows): ((8,m),(T,2k)):((W/2,SBO),(1,T))."""
    if d["swizzle"] == 0:
        off = (row % 8) * 16 + (row // 8) * d["sbo"] + (k % 8) * 2 + (k // 8) * d["lbo"]
    else:
        width = 16 << SWIZZLE_BITS[d["swizzle"]]
        off = (row % 8) * width + (row // 8) * d["sbo"] + k * 2
    return swizzle(d["start"] + off, d["swizzle"])


def mn_major_offset(d: dict, k: int, n: int) -> int:
    """Byte address of (k, n) of an MN-major operand of 16-bit elements (T = 8):
    none: ((T,1,m),(8,k)):((1,T,SBO),(1T,LBO)); swizzled: ((T,W/16,m),(8,k)):((1,T,LBO),(W/2,SBO))."""
    if d["swizzle"] == 0:
        off = (n % 8) * 2 + (n // 8) * d["sbo"] + (k % 8) * 16 + (k // 8) * d["lbo"]
    else:
        width = 16 << SWIZZLE_BITS[d["swizzle"]]
        per = width // 2  # elements per swizzle row
        off = (n % per) * 2 + (n // per) * d["lbo"] + (k % 8) * width + (k // 8) * d["sbo"]
    return swizzle(d["start"] + off, d["swizzle"])


def read16(buf: bytes, addr: int) -> int:
    return int.from_bytes(buf[addr : addr + 2], "little")


def operand_a(buf: bytes, desc: int) -> list[list[int]]:
    """The 64 x 16 A operand (K-major, imm-trans-a = 0) as raw 16-bit values."""
    d = decode(desc)
    return [[read16(buf, k_major_offset(d, r, k)) for k in range(16)] for r in range(64)]


def operand_b(buf: bytes, desc: int, n: int) -> list[list[int]]:
    """The 16 x N B operand (N-major, imm-trans-b = 1) as raw 16-bit values."""
    d = decode(desc)
    return [[read16(buf, mn_major_offset(d, k, c)) for c in range(n)] for k in range(16)]


def accumulator_element(t: int, i: int) -> tuple[int, int]:
    """ISA figure "WGMMA .m64nNk16 register fragment layout for accumulator matrix D": thread
    t of the warpgroup, f32 register i -> (row, col) of the 64 x N tile."""
    warp, lane = divmod(t, 32)
    return 16 * warp + lane // 4 + 8 * ((i >> 1) & 1), 8 * (i // 4) + 2 * (lane % 4) + (i & 1)


def bits_to_float(values, dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int32).to(torch.int16).view(dtype).float()


# --------------------------------------------------------------------------- helpers


def stage(x, *, config, b0, d0, d_end, col0, kind="rademacher", offset=0, proj_dim=300, vector=True):
    batch, dim = x.shape
    return _C.wgmma_host_stage(
        x.data_ptr(), DTYPE_CODES[x.dtype], batch, dim, x.stride(0), x.stride(1), proj_dim,
        SEED, 0 if kind == "rademacher" else 1, offset, config, b0, d0, d_end, col0, vector,
    )  # fmt: skip


def expected_x_block(x, b0, rows, d0, d_end) -> torch.Tensor:
    """Rows b0 .. b0 + rows - 1, columns d0 .. d0 + 31 of x, zeros past B and past d_end."""
    block = torch.zeros(rows, BLOCK_D, dtype=x.dtype)
    b1, d1 = min(b0 + rows, x.shape[0]), min(d0 + BLOCK_D, d_end)
    if b1 > b0 and d1 > d0:
        block[: b1 - b0, : d1 - d0] = x[b0:b1, d0:d1]
    return block


def expected_x_tile_bits(x, b0, rows, d0, d_end, *, vector) -> torch.Tensor:
    """expected_x_block's 16-bit patterns (int32), except that the vector path's whole steps
    (d0 + 32 <= d_end) leave the rows past B as they were: wgmma_host_stage fills the tile
    with 0xEE bytes first (load_x_tile_rows: nothing stored reads those rows)."""
    bits = expected_x_block(x, b0, rows, d0, d_end).view(torch.int16).int() & 0xFFFF
    if vector and d0 + BLOCK_D <= d_end:
        bits[max(x.shape[0] - b0, 0) :] = 0xEEEE
    return bits


def tiling(config: int, wg: int) -> tuple[int, int, int]:
    """(first row, first column, N) of warpgroup wg's part of the CTA tile (the kernel's
    design, wgmma_layouts.cuh: B128 splits the rows, B64 the columns)."""
    return (64 * wg, 0, 128) if config == 2 else (0, 64 * wg, 64)


def random_x(batch, dim, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, dim, generator=gen).to(dtype)


# --------------------------------------------------------------------------- tests

# (config, B, D, b0, d0, d_end): full tiles, rows past B, a D-range ending inside the step
# (and inside a 16-byte chunk).  D is a multiple of 8 so that 16-bit rows stay 16-byte aligned
# for the vector path.
CASES = [
    (2, 300, 104, 128, 32, 100),
    (2, 150, 80, 128, 64, 77),  # 22 valid rows, 13 valid columns
    (2, 150, 96, 128, 32, 96),  # 22 valid rows, a whole step
    (1, 64, 64, 0, 0, 64),
    (1, 40, 56, 0, 32, 45),
    (1, 40, 64, 0, 0, 64),  # 40 valid rows, a whole step
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("vector", [True, False])
def test_x_tile_is_where_the_a_descriptors_read_it(dtype, case, vector):
    config, batch, dim, b0, d0, d_end = case
    x = random_x(batch, dim, dtype, seed=batch + dim)
    if not vector:  # the element path: a transposed (strided) view of x
        x = x.t().contiguous().t()
    st = stage(x, config=config, b0=b0, d0=d0, d_end=d_end, col0=0, vector=vector)
    block = expected_x_tile_bits(x, b0, CONFIG_ROWS[config], d0, d_end, vector=vector)
    for wg in range(2):
        row0, _, _ = tiling(config, wg)
        for kk in range(2):
            a = torch.tensor(operand_a(st["x_tile"], st["a_desc"][2 * wg + kk]), dtype=torch.int32)
            want = block[row0 : row0 + 64, 16 * kk : 16 * kk + 16]
            assert torch.equal(a, want), (wg, kk)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("config", [1, 2])
@pytest.mark.parametrize("col0, offset", [(0, 0), (256, 12345)])
def test_rademacher_p_tile_is_where_the_b_descriptors_read_it(dtype, config, col0, offset):
    x = random_x(4, 64, dtype)
    st = stage(x, config=config, b0=0, d0=32, d_end=64, col0=col0, offset=offset)
    assert st["p_lo"] == b""
    p = matrix_block(SEED, "rademacher", range(offset + 32, offset + 64), range(col0, col0 + BLOCK_N))
    for wg in range(2):
        _, c0, n = tiling(config, wg)
        assert st["n"] == n
        for kk in range(2):
            b = bits_to_float(operand_b(st["p_hi"], st["b_desc"][2 * wg + kk], n), dtype)
            assert torch.equal(b.double(), p[16 * kk : 16 * kk + 16, c0 : c0 + n]), (wg, kk)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gaussian_p_planes_are_where_the_b_descriptors_read_them(dtype):
    proj_dim = 200  # the second column tile is partly past K: zeros there
    x = random_x(4, 64, dtype)
    st = stage(x, config=2, b0=0, d0=0, d_end=64, col0=128, kind="gaussian", offset=7, proj_dim=proj_dim)
    p = matrix_block(SEED, "gaussian", range(7, 7 + BLOCK_D), range(128, 256))
    p[:, proj_dim - 128 :] = 0
    for kk in range(2):
        hi = bits_to_float(operand_b(st["p_hi"], st["b_desc"][kk], 128), dtype).double()
        lo = bits_to_float(operand_b(st["p_lo"], st["b_desc"][kk], 128), dtype).double()
        want = p[16 * kk : 16 * kk + 16]
        # hi + lo carries ~16 (bf16) or ~22 (fp16) bits of the entry.
        assert torch.allclose(hi + lo, want, rtol=2**-15, atol=1e-6)
        assert torch.equal(hi == 0, want == 0)


def test_descriptor_fields_match_the_isa_by_hand():
    st = stage(random_x(4, 64, torch.bfloat16), config=2, b0=0, d0=0, d_end=64, col0=0)
    # x tile, B128, warpgroup 1, k16 slice 1: start = 64 rows * 64 B + 32 B = 4128 -> 258;
    # LBO 16 B -> 1 (unused by swizzled K-major, "assumed 1"); SBO 512 B -> 32; 64B swizzle = 2.
    assert st["a_desc"][3] == 258 | (1 << 16) | (32 << 32) | (2 << 62) == 0x8000002000010102
    # P plane, B128, warpgroup 0, k16 slice 0: start 0; LBO 1024 B -> 64; SBO 2048 B -> 128;
    # 128B swizzle = 1.
    assert st["b_desc"][0] == (64 << 16) | (128 << 32) | (1 << 62) == 0x4000008000400000
    st = stage(random_x(4, 64, torch.bfloat16), config=1, b0=0, d0=0, d_end=64, col0=0)
    # P plane, B64, warpgroup 1 (columns 64..127), k16 slice 1: start 1024 + 2 * 2048 = 5120 -> 320.
    assert st["b_desc"][3] == 320 | (64 << 16) | (128 << 32) | (1 << 62) == 0x4000008000400140
    # B64 warpgroups share the x rows: both start at row 0.
    assert st["a_desc"][0] == st["a_desc"][2]
    for desc in st["a_desc"] + st["b_desc"]:
        fields = decode(desc)
        assert fields["reserved"] == 0 and fields["base_offset"] == 0


def test_swizzle_atoms_are_aligned_so_base_offset_is_zero():
    # Base offset 0 is right only if every swizzle pattern starts on its own boundary
    # (1024 B for 128B, 512 B for 64B): the k16 slices start inside an atom, their atoms don't.
    for config in (1, 2):
        st = stage(random_x(4, 64, torch.bfloat16), config=config, b0=0, d0=0, d_end=64, col0=0)
        for index, desc in enumerate(st["a_desc"]):  # [warpgroup][k16 slice]
            assert (decode(desc)["start"] - 32 * (index % 2)) % 512 == 0
        for desc in st["b_desc"]:
            assert decode(desc)["start"] % 1024 == 0


@pytest.mark.parametrize("config", [1, 2])
def test_accumulator_map_is_the_isa_fragment(config):
    st = stage(random_x(4, 64, torch.bfloat16), config=config, b0=0, d0=0, d_end=64, col0=0)
    regs = st["n"] // 2
    acc = st["accumulator"]
    assert len(acc) == 128 * regs * 2
    for t in range(128):
        for i in range(regs):
            assert (acc[2 * (t * regs + i)], acc[2 * (t * regs + i) + 1]) == accumulator_element(t, i)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("config", [1, 2])
def test_epilogue_stores_the_emulated_wgmma_products_where_they_belong(dtype, config):
    """wgmma emulated from the decoded operands, its D distributed over threads and registers
    by the ISA's fragment layout, then stored through the kernel's epilogue map: the result
    must be the CTA's block of x @ P."""
    rows, batch, dim = CONFIG_ROWS[config], CONFIG_ROWS[config] + 5, 40
    x = random_x(batch, dim, dtype, seed=config)
    st = stage(x, config=config, b0=0, d0=0, d_end=dim, col0=0)
    regs = st["n"] // 2
    values = torch.zeros(256, regs, dtype=torch.float64)
    for wg in range(2):
        d = 0
        for kk in range(2):
            a = bits_to_float(operand_a(st["x_tile"], st["a_desc"][2 * wg + kk]), dtype).double()
            b = bits_to_float(operand_b(st["p_hi"], st["b_desc"][2 * wg + kk], st["n"]), dtype).double()
            d = d + a @ b
        for t in range(128):
            for i in range(regs):
                values[128 * wg + t, i] = d[accumulator_element(t, i)]
    out = torch.full((rows, BLOCK_N), float("nan"), dtype=torch.float64)
    ep = st["epilogue"]
    seen = set()
    for tid in range(256):
        for i in range(regs):
            r, c = ep[2 * (tid * regs + i)], ep[2 * (tid * regs + i) + 1]
            seen.add((r, c))
            out[r, c] = values[tid, i]
    assert len(seen) == rows * BLOCK_N  # every output of the CTA tile stored exactly once
    p = matrix_block(SEED, "rademacher", range(BLOCK_D), range(BLOCK_N))
    want = expected_x_block(x, 0, rows, 0, dim).double() @ p
    assert torch.equal(out, want)


def test_bad_arguments_name_themselves():
    x = random_x(4, 64, torch.bfloat16)
    with pytest.raises(ValueError, match="config must be 1"):
        stage(x, config=0, b0=0, d0=0, d_end=64, col0=0)
    with pytest.raises(ValueError, match="col0 must be"):
        stage(x, config=2, b0=0, d0=0, d_end=64, col0=5)
    with pytest.raises(ValueError, match="x_dtype must be float16 or bfloat16"):
        xf = x.float()
        _C.wgmma_host_stage(xf.data_ptr(), 0, 4, 64, 64, 1, 300, SEED, 0, 0, 2, 0, 0, 64, 0, True)
