"""bench/triton_loop_stats.py: finding the main loop in a SASS listing and counting its MMAs."""

import importlib.util
from pathlib import Path

PATH = Path(__file__).resolve().parents[1] / "bench" / "triton_loop_stats.py"
spec = importlib.util.spec_from_file_location("triton_loop_stats", PATH)
stats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(stats)

LISTING = """
        /*0000*/                   MOV R1, c[0x0][0x28] ;
.L_x_0:
        /*0010*/                   IADD3 R2, R2, 0x1, RZ ;
        /*0020*/                   ISETP.NE.AND P0, PT, R2, R3, PT ;
        /*0030*/              @P0 BRA `(.L_x_0) ;
.L_x_1:
        /*0040*/                   LDS.128 R4, [R2] ;
        /*0050*/                   HMMA.16816.F32.BF16 R8, R4, R6, R8 ;
        /*0060*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4].tnspB, R24 ;
        /*0070*/                   HMMA.1688.F32.TF32 R8, R4, R6, R8 ;
        /*0080*/              @!P0 BRA `(.L_x_1) ;
        /*0090*/                   BRA `(.L_x_2) ;
.L_x_2:
        /*00a0*/                   EXIT ;
"""


def test_the_loop_with_the_most_mmas_is_the_main_loop():
    body = stats.main_loop(LISTING.splitlines())
    assert len(body) == 5 and body[0].startswith("LDS.128") and body[-1].startswith("@!P0 BRA")
    assert stats.mma_count(body) == 3


def test_m16n8k16_equivalents():
    # HMMA.16816: 1; HGMMA 64x128x16 per warp of its warpgroup: 64*128*16 / 2048 / 4 = 16; tf32 1688: 1/2
    assert stats.m16n8k16_equivalents_per_warp(stats.main_loop(LISTING.splitlines())) == 1 + 16 + 0.5
