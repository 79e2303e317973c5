"""Instructions of the sparse kinds' CUDA kernel (csrc/sparse_kernel.cu) per unit of work, read
from the compiled code without a GPU: the static measure of its staging and summing steps.

    python bench/sparse_sass_stats.py                    # fastjl/_C*.so of this checkout
    python bench/sparse_sass_stats.py old.cubin --arch sm_90

A chunk step of a thread is (csrc/sparse_chunk.cuh) its share of the 16-byte copies that stage
the next chunk (``stage_chunk``), then the runs of its columns (``chunk_columns``).  Columns:

    static    instructions of the whole kernel
    copy      instructions per 16-byte copy of x in the staging loop of whole chunks (every
              chunk of a whole batch tile but a call's last, since stop 27: the innermost loop
              with copies but no zero-fill that follows the clamped loop below)
    clamped   the same for the clamped staging loop (the innermost loop with the most
              LDGSTS.ZFILL: a call's last chunk, the last batch tile)
    entry     instructions per entry in the run loop (the innermost loop with the most adds,
              divided by the entries its body handles: adds / batch rows)
    per_row   entry / batch rows: the run loop's instructions per entry and batch row
    unroll    entries per run-loop body: 1 since stop 25 (runs average ~1 entry a chunk, and
              nvcc's 4x unroll paid a remainder loop and a 4-entry body per column: NOTES)
    transpose instructions per row of the chunk in the loop that transposes the x windows into
              T (since stop 29: the innermost loop with vector shared stores and no adds;
              rows = bytes stored / bytes of a row of T)
    x_loads   shared loads of x per entry in the run loop: 1 since stop 29 (one 8- or 16-byte
              row of the transposed windows for every batch row; one per batch row before)
    adds      the run loop's add opcode (FADD before stop 25, FFMA since: acc + x·(±1))

Compare a build before and after a change: these are the figures bench/NOTES.md quotes.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cuda_resources import _load_cuda_resources, compiled_code_args  # noqa: E402

_KERNEL_RE = re.compile(r"sparse_project_kernelILi(\d)ELi(\d)E")
DTYPES = {"0": "float32", "1": "float16", "2": "bfloat16"}
ADDS = ("FADD", "FFMA")


def innermost_spans(cr, insts) -> list[tuple[int, int]]:
    """(first, last) of the loops (backward branches) that hold no other loop, in program order."""
    spans = cr._loop_spans(insts)
    inner = [(f, l) for f, l in spans if not any(f <= f2 and l2 <= l and (f2, l2) != (f, l) for f2, l2 in spans)]
    return sorted(inner)


def kernel_stats(cr, insts, batch_rows: int, row_bytes: int = 16) -> dict:
    """The columns above for one kernel; ``row_bytes``: the bytes of a row of T (batch rows x
    element size: 16, or 8 for half as many batch rows)."""
    spans = innermost_spans(cr, insts)
    body_of = lambda span: insts[span[0] : span[1] + 1]  # noqa: E731
    count = lambda body, ops: sum(op in ops for _, op, _ in body)  # noqa: E731
    # The clamped copies of x are the LDGSTS with a source size (.ZFILL); the whole chunks' copies
    # of x, and the structure's, copy 16 bytes.
    zfill = lambda body: sum(op == "LDGSTS" and ".ZFILL" in rest for _, op, rest in body)  # noqa: E731
    clamped = [sp for sp in spans if zfill(body_of(sp)) and not count(body_of(sp), ADDS)]
    runs = [body_of(sp) for sp in spans if count(body_of(sp), ADDS)]
    stats = {"static": len(insts), "copy": None, "clamped": None, "transpose": None, "entry": None, "per_row": None,
             "unroll": None, "x_loads": None, "adds": "-"}  # fmt: skip
    # Bytes of T a loop stores (nvcc may merge two adjacent 8-byte rows into one STS.128).
    stored = lambda body: sum({".128": 16, ".64": 8}.get(rest.split()[0], 0) for _, op, rest in body if op == "STS")  # noqa: E731
    transposes = [body_of(sp) for sp in spans if stored(body_of(sp)) and not count(body_of(sp), ADDS)]
    if transposes:
        body = max(transposes, key=stored)
        stats["transpose"] = len(body) / (stored(body) / row_bytes)
    if clamped:  # the steady state: the loop with the most copies (nvcc unrolls, then a remainder)
        span = max(clamped, key=lambda sp: (zfill(body_of(sp)), -len(body_of(sp))))
        stats["clamped"] = len(body_of(span)) / zfill(body_of(span))
        # stage_chunk's whole-chunk loop: the next innermost loop with copies, none zero-filled.
        whole = [sp for sp in spans if sp[0] > span[1] and not count(body_of(sp), ADDS)]
        whole = [sp for sp in whole[:1] if count(body_of(sp), ("LDGSTS",)) and not zfill(body_of(sp))]
        if whole:
            stats["copy"] = len(body_of(whole[0])) / count(body_of(whole[0]), ("LDGSTS",))
    if runs:  # the run loop: the innermost loop with the most adds (unrolled entries)
        body = max(runs, key=lambda b: (count(b, ADDS), -len(b)))
        stats["unroll"] = count(body, ADDS) / batch_rows
        stats["entry"] = len(body) / stats["unroll"]
        stats["per_row"] = stats["entry"] / batch_rows
        # Shared loads but the look-ahead's 16-bit entry loads: x's.
        shared = sum(op == "LDS" and not rest.startswith((".U16", ".S16")) for _, op, rest in body)
        stats["x_loads"] = shared / stats["unroll"]
        stats["adds"] = next(op for _, op, _ in body if op in ADDS)
    return stats


def instantiation_stats(cr, name: str, insts) -> tuple[str, int, dict] | None:
    """(x dtype, batch rows, kernel_stats) of a sparse_project_kernel instantiation, else None."""
    m = _KERNEL_RE.search(name)
    if not m:
        return None
    dtype, rows = DTYPES[m.group(1)], int(m.group(2))
    return dtype, rows, kernel_stats(cr, insts, rows, rows * (4 if dtype == "float32" else 2))


def sass_by_arch(tool: str, path: Path) -> dict[str, str]:
    """{sm_XX: its SASS} of a module or a cubin (cuobjdump heads each with 'code for sm_XX')."""
    text = _load_cuda_resources()._run([tool, "--dump-sass", str(path)])
    parts = re.split(r"^\s*code for (sm_\w+)\s*$", text, flags=re.M)
    found: dict[str, str] = {}
    for arch, body in zip(parts[1::2], parts[2::2]):
        found[arch] = found.get(arch, "") + body
    return found


def main(argv: list[str] | None = None) -> int:
    cr = _load_cuda_resources()
    args, path, tool = compiled_code_args(__doc__.splitlines()[0], argv, "a module or cubin")
    by_arch = sass_by_arch(tool, path)
    widths = {"copy": 6, "clamped": 7, "transpose": 9, "entry": 6, "per_row": 7, "unroll": 6, "x_loads": 7}
    header = " ".join(f"{k:>{w}}" for k, w in widths.items())
    print(f"{'kernel':<28} {'arch':<6} {'static':>6} {header}  adds")
    rows = 0
    for arch in sorted(by_arch):
        if args.arch and arch not in args.arch:
            continue
        for name, insts in sorted(cr.parse_sass(by_arch[arch]).items()):
            found = instantiation_stats(cr, name, insts)
            if found is None:
                continue
            dtype, batch_rows, s = found
            fmt = lambda v: "-" if v is None else f"{v:.1f}"  # noqa: E731
            label = f"{dtype}, {batch_rows} rows"
            figures = " ".join(f"{fmt(s[k]):>{w}}" for k, w in widths.items())
            print(f"{label:<28} {arch:<6} {s['static']:>6} {figures}  {s['adds']}")
            rows += 1
    if not rows:
        print(f"no sparse_project_kernel in {path}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
