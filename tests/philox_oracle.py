"""An independent, scalar, pure-Python spec v1 used as a test oracle.

Deliberately written from the spec text without sharing code with ``fastjl.spec`` (plain
Python integers, no torch), so a bug in the tensor implementation cannot hide in both.
"""

import math

M32 = 0xFFFFFFFF


def philox(counter, key):
    c = list(counter)
    k0, k1 = key
    for r in range(10):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0 = 0xD2511F53 * c[0]
        p1 = 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & M32, (p0 >> 32) ^ c[3] ^ k1, p0 & M32]
    return c


def entry(seed, kind, i, j):
    key = (seed & M32, seed >> 32)
    if kind == "rademacher":
        r = philox((i & M32, i >> 32, j // 128, 0), key)
        return 1.0 - 2.0 * ((r[(j % 128) // 32] >> (j % 32)) & 1)
    r = philox((i & M32, i >> 32, j // 4, 1), key)
    u = [(2 * (w >> 9) + 1) / 2**24 for w in r]
    lane = j % 4
    ur, ua = u[2 * (lane // 2)], u[2 * (lane // 2) + 1]
    trig = math.cos if lane % 2 == 0 else math.sin
    return math.sqrt(-2.0 * math.log(ur)) * trig(2.0 * math.pi * ua)
