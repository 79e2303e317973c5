"""Resource use of the CUDA kernels compiled into ``fastjl._C``, read without a GPU.

The built module embeds one cubin per CUDA architecture (CMakeLists.txt).  ``cuobjdump``
reads them statically:

* ``cuobjdump --dump-resource-usage SO`` gives, per cubin (``arch = sm_XX``) and function,
  ``REG`` (registers per thread), ``STACK`` (stack frame bytes per thread: register spills
  *and* local arrays / non-inlined calls), ``SHARED`` (static shared memory; the kernels'
  dynamic shared memory is not in the cubin) and ``LOCAL``;
* ``cuobjdump --dump-sass --gpu-architecture sm_XX SO`` gives the SASS, where every local
  memory access is an ``STL`` (store) or ``LDL`` (load) instruction: spill traffic, plus the
  accesses to any local array.

Names are demangled with ``c++filt`` (binutils) or ``cu++filt`` (CUDA toolkit) and shortened
to the template instantiation (``project_kernel<TileConfig<128, 4>, GradTileProducer, 1>``).

Used by tests/test_cuda_compile.py (CI's register / spill budget) and bench/cuda_resources.py
(the table, for before/after comparisons of a kernel change).  Only the standard library is
needed; nothing here loads the module or touches a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

CUOBJDUMP_ENV = "CUOBJDUMP"

_ARCH_RE = re.compile(r"^arch = (sm_\d+[a-z]?)\s*$")
_RES_FUNCTION_RE = re.compile(r"^\s*Function (\S+):\s*$")
_RES_FIELD_RE = re.compile(r"([A-Z]+(?:\[\d+\])?):(\d+)")
_SASS_FUNCTION_RE = re.compile(r"^\s*Function : (\S+)\s*$")


@dataclass(frozen=True)
class KernelResources:
    """One function of one cubin."""

    name: str  # short demangled name, e.g. project_kernel<TileConfig<128, 4>, GradTileProducer, 1>
    arch: str  # "sm_90"
    registers: int
    stack: int  # stack frame bytes per thread (spills + local arrays)
    local: int  # LOCAL bytes reported by cuobjdump
    shared: int  # static shared memory bytes
    stl: int  # STL (local store) instructions in the SASS
    ldl: int  # LDL (local load) instructions in the SASS
    mangled: str
    demangled: str
    loop: LoopStats | None = None  # the main loop's static counts (None: no MMA loop)

    @property
    def local_traffic(self) -> int:
        """STL + LDL instructions: the static count of local-memory accesses."""
        return self.stl + self.ldl

    @property
    def uses_local_memory(self) -> bool:
        return bool(self.stack or self.local or self.stl or self.ldl)


# --------------------------------------------------------------------------- tools


def find_cuobjdump() -> str | None:
    """cuobjdump: $CUOBJDUMP, PATH, the CUDA toolkit next to nvcc, or the copy Triton ships."""
    candidates = [os.environ.get(CUOBJDUMP_ENV), shutil.which("cuobjdump")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parent / "cuobjdump"))
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "cuobjdump"))
    # Triton's NVIDIA backend bundles cuobjdump (and nvdisasm) in triton/backends/nvidia/bin;
    # found without importing triton.
    spec = importlib.util.find_spec("triton")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            candidates.append(str(Path(loc) / "backends" / "nvidia" / "bin" / "cuobjdump"))
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def find_demangler() -> str | None:
    """c++filt (binutils, present wherever the module was linked) or the toolkit's cu++filt."""
    candidates = [shutil.which("c++filt"), shutil.which("cu++filt")]
    for home in (os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"):
        if home:
            candidates.append(str(Path(home) / "bin" / "cu++filt"))
    for cand in candidates:
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def extension_path() -> Path | None:
    """The built ``fastjl/_C*.so`` (found without loading it), or None when it is not built."""
    pkg = Path(__file__).resolve().parents[1]
    found = sorted(p for p in pkg.glob("_C*") if p.suffix in (".so", ".pyd"))
    if found:
        return found[0]
    try:
        spec = importlib.util.find_spec("fastjl._C")
    except ImportError:
        return None
    return Path(spec.origin) if spec is not None and spec.origin else None


def _arch_number(arch: str) -> int:
    digits = re.sub(r"\D", "", arch)
    return int(digits) if digits else 0


def _run(cmd: list[str], stdin: str | None = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[:2000]}")
    return proc.stdout


# --------------------------------------------------------------------------- parsing


def parse_resource_usage(text: str) -> list[tuple[str, str, dict[str, int]]]:
    """``cuobjdump --dump-resource-usage`` output -> [(arch, mangled name, {FIELD: value})].

    Each "Fatbin elf code" block starts with ``arch = sm_XX``; its functions follow as
    ``Function NAME:`` and one line of ``FIELD:value`` pairs (REG, STACK, SHARED, LOCAL, ...).
    PTX blocks list no functions.
    """
    rows: list[tuple[str, str, dict[str, int]]] = []
    arch = None
    pending = None
    for line in text.splitlines():
        m = _ARCH_RE.match(line.strip())
        if m:
            arch, pending = m.group(1), None
            continue
        m = _RES_FUNCTION_RE.match(line)
        if m:
            pending = m.group(1)
            continue
        if pending is not None:
            fields = {k: int(v) for k, v in _RES_FIELD_RE.findall(line)}
            if "REG" in fields:
                if arch is None:
                    raise ValueError(f"function {pending} before any 'arch =' line")
                rows.append((arch, pending, fields))
            pending = None
    return rows


def count_elf_blocks(text: str) -> dict[str, int]:
    """Number of cubins ("Fatbin elf code" blocks) per architecture in cuobjdump output."""
    counts: dict[str, int] = {}
    in_elf = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("Fatbin "):
            in_elf = s.startswith("Fatbin elf code")
            continue
        m = _ARCH_RE.match(s)
        if m and in_elf:
            counts[m.group(1)] = counts.get(m.group(1), 0) + 1
            in_elf = False
    return counts


_SASS_LINE_RE = re.compile(r"^\s*/\*([0-9a-f]+)\*/\s+(?:@!?U?P[0-9T]\s+)?([A-Z][A-Z0-9_]*)(\S*)\s*(.*)$")
_BRANCH_TARGET_RE = re.compile(r"(0x[0-9a-f]+)\s*;")
# Opcodes counted in the main loop: tensor-core MMAs, async global->shared copies, ldmatrix,
# barriers, and (SM90) warpgroup MMAs.
_LOOP_OPCODES = {
    "HMMA": "mma",
    "HGMMA": "mma",
    "LDGSTS": "ldgsts",
    "LDSM": "ldsm",
    "BAR": "bar",
    "STL": "local",
    "LDL": "local",
}


_HGMMA_SHAPE_RE = re.compile(r"^\.64x(\d+)x(\d+)\b")  # m64 nN kK: x16 for 16-bit inputs, x8 for tf32
_HMMA_SHAPE_RE = re.compile(r"^\.(\d+)\b")


def mma_equivalents(opcode: str, operands: str) -> float:
    """How many m16n8k16 MMAs (mma.sync's HMMA.16816) one warp's tensor-core instruction is
    worth: HMMA.16816 1, HMMA.1688 1/2; a warpgroup's HGMMA.64xNxK is issued by each of its 4
    warps, each warp's share 16 x N x K, i.e. N/8 for K = 16 and N/16 for tf32's K = 8.
    ``operands`` starts with the opcode's modifiers (``.64x128x16.F32.BF16 ...``), as
    :func:`parse_sass` stores them."""
    if opcode == "HGMMA":
        m = _HGMMA_SHAPE_RE.match(operands)
        return int(m.group(1)) * int(m.group(2)) / 128 if m else 1.0
    if opcode == "HMMA":
        m = _HMMA_SHAPE_RE.match(operands)
        return 0.5 if m and m.group(1) == "1688" else 1.0
    return 0.0


@dataclass(frozen=True)
class LoopStats:
    """Static counts of a kernel's main loop: the innermost loop (a backward branch and the
    code it jumps back over) that holds the most tensor-core MMAs, i.e. one CTA step.  Static:
    every instruction once, inner loops and untaken branches included, so the count is what one
    step issues when every branch is taken once; compare it before and after a change."""

    instructions: int
    mma: int  # tensor-core instructions (HMMA or HGMMA)
    ldgsts: int
    ldsm: int
    bar: int
    local: int  # STL + LDL inside the loop: spill traffic on every step
    inner_loops: int  # backward branches inside the body: loops not unrolled
    mma_equiv: float = 0.0  # the same work in m16n8k16 MMAs (mma_equivalents); 0: = mma

    @property
    def per_mma(self) -> float:
        """Instructions per m16n8k16-equivalent MMA: comparable between HMMA and HGMMA loops."""
        work = self.mma_equiv or self.mma
        return self.instructions / work if work else float("inf")


Instructions = list[tuple[int, str, str]]  # (address, opcode, operands) of one function


def parse_sass(sass: str) -> dict[str, Instructions]:
    """SASS -> {mangled function: its instructions}, read once for every count below."""
    functions: dict[str, Instructions] = {}
    current = None
    for line in sass.splitlines():
        m = _SASS_FUNCTION_RE.match(line)
        if m:
            current = m.group(1)
            functions[current] = []
            continue
        m = _SASS_LINE_RE.match(line) if current is not None else None
        if m:
            # The opcode's modifiers (.64x128x16.F32.BF16) stay in front of the operands.
            functions[current].append((int(m.group(1), 16), m.group(2), f"{m.group(3)} {m.group(4)}".strip()))
    return functions


def local_accesses(functions: dict[str, Instructions]) -> dict[str, tuple[int, int]]:
    """{mangled function: (STL count, LDL count)}, for every function of :func:`parse_sass`."""
    return {
        name: tuple(sum(op == kind for _, op, _ in insts) for kind in ("STL", "LDL"))
        for name, insts in functions.items()
    }


def count_local_accesses(sass: str) -> dict[str, tuple[int, int]]:
    """SASS -> {mangled function: (STL count, LDL count)}, for every function listed."""
    return local_accesses(parse_sass(sass))


def main_loops(functions: dict[str, Instructions]) -> dict[str, LoopStats]:
    """{mangled function: its main loop's LoopStats}, for functions that have MMAs in a loop."""
    loops = {name: _main_loop(insts) for name, insts in functions.items()}
    return {name: loop for name, loop in loops.items() if loop is not None}


def main_loop_stats(sass: str) -> dict[str, LoopStats]:
    """SASS -> {mangled function: its main loop's LoopStats} (see :func:`main_loops`)."""
    return main_loops(parse_sass(sass))


def branches(insts: Instructions) -> list[tuple[int, int]]:
    """(index, target index) of every branch of a function whose target is one of its
    instructions: backward ones close loops, forward ones skip code."""
    index = {addr: i for i, (addr, _, _) in enumerate(insts)}
    found = []
    for i, (_, op, rest) in enumerate(insts):
        if op == "BRA":
            m = _BRANCH_TARGET_RE.search(rest)
            target = index.get(int(m.group(1), 16)) if m else None
            if target is not None:
                found.append((i, target))
    return found


def _loop_spans(insts: Instructions) -> list[tuple[int, int]]:
    """(first index, last index) of every backward branch's body."""
    return [(target, i) for i, target in branches(insts) if target <= i]


def _main_loop(insts: Instructions) -> LoopStats | None:
    found = main_loop_and_span(insts)
    return found[0] if found else None


def main_loop_and_span(insts: Instructions) -> tuple[LoopStats, tuple[int, int]] | None:
    """The main loop's LoopStats and its (first, last) instruction index, or None."""
    loops = _loop_spans(insts)
    best = None
    for first, last in loops:
        body = insts[first : last + 1]
        counts = {k: 0 for k in ("mma", "ldgsts", "ldsm", "bar", "local")}
        for _, op, _ in body:
            if op in _LOOP_OPCODES:
                counts[_LOOP_OPCODES[op]] += 1
        inner = sum(1 for f, l in loops if first <= f and l < last)
        equiv = sum(mma_equivalents(op, rest) for _, op, rest in body)
        stats = LoopStats(instructions=len(body), inner_loops=inner, mma_equiv=equiv, **counts)
        # The most MMAs wins; among equals the innermost (shortest) body.
        if stats.mma and (best is None or (stats.mma, -stats.instructions) > (best[0].mma, -best[0].instructions)):
            best = (stats, (first, last))
    return best


def demangle(names: list[str], demangler: str | None = None) -> dict[str, str]:
    """Mangled -> demangled names (unchanged where no demangler is found or it fails)."""
    names = sorted(set(names))
    tool = demangler or find_demangler()
    if not names or tool is None:
        return {n: n for n in names}
    out = _run([tool], stdin="\n".join(names) + "\n").splitlines()
    if len(out) != len(names):
        return {n: n for n in names}
    return dict(zip(names, out))


def short_name(demangled: str) -> str:
    """``void fastjl::proj::project_kernel<fastjl::proj::TileConfig<128, 4>, ...>(args)`` ->
    ``project_kernel<TileConfig<128, 4>, ...>``: no namespaces, return type or parameters."""
    s = demangled.replace("(anonymous namespace)::", "")
    s = re.sub(r"\b[A-Za-z_]\w*::", "", s)
    depth = 0
    for i, ch in enumerate(s):  # cut the parameter list: the first '(' outside <...>
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            s = s[:i]
            break
    if s.startswith("void "):
        s = s[len("void ") :]
    return s.strip()


# --------------------------------------------------------------------------- collection


@dataclass(frozen=True)
class Report:
    """Everything the cubins of one module say: per-function rows and cubins per arch."""

    path: Path
    kernels: list[KernelResources]
    cubins: dict[str, int]  # arch -> number of cubins (one per .cu file that has device code)

    def archs(self) -> list[str]:
        return sorted(self.cubins, key=_arch_number)


def collect(path: str | Path, archs: list[str] | None = None, cuobjdump: str | None = None) -> Report:
    """Registers, stack, shared memory and STL/LDL counts of every function of every cubin
    in ``path`` (``archs``: the architectures to read, default all that are embedded)."""
    path = Path(path)
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (set $CUOBJDUMP or put the CUDA toolkit's bin on PATH)")
    res_text = _run([tool, "--dump-resource-usage", str(path)])
    cubins = count_elf_blocks(res_text)
    rows = parse_resource_usage(res_text)
    wanted = archs if archs is not None else sorted(cubins)
    wanted = [a for a in wanted if a in cubins]
    # One SASS dump per architecture, concurrently (each is a few seconds of cuobjdump).
    with ThreadPoolExecutor(max_workers=max(1, len(wanted))) as pool:
        sass = dict(
            zip(
                wanted,
                pool.map(lambda a: _run([tool, "--dump-sass", "--gpu-architecture", a, str(path)]), wanted),
            )
        )
    parsed = {a: parse_sass(text) for a, text in sass.items()}  # each dump parsed once
    local = {a: local_accesses(functions) for a, functions in parsed.items()}
    loops = {a: main_loops(functions) for a, functions in parsed.items()}
    names = demangle([r[1] for r in rows if r[0] in local])
    kernels = []
    for arch, mangled, f in rows:
        if arch not in local:
            continue
        stl, ldl = local[arch].get(mangled, (0, 0))
        kernels.append(
            KernelResources(
                name=short_name(names[mangled]),
                arch=arch,
                registers=f.get("REG", 0),
                stack=f.get("STACK", 0),
                local=f.get("LOCAL", 0),
                shared=f.get("SHARED", 0),
                stl=stl,
                ldl=ldl,
                mangled=mangled,
                demangled=names[mangled],
                loop=loops[arch].get(mangled),
            )
        )
    # Two functions that shorten to one name (same template in two namespaces) keep their
    # full demangled names, so every (name, arch) is unique.
    seen: dict[tuple[str, str], int] = {}
    for k in kernels:
        seen[(k.name, k.arch)] = seen.get((k.name, k.arch), 0) + 1
    kernels = [k if seen[(k.name, k.arch)] == 1 else replace(k, name=k.demangled) for k in kernels]
    return Report(path=path, kernels=kernels, cubins=cubins)


def format_table(kernels: list[KernelResources], marks: dict[tuple[str, str], str] | None = None) -> str:
    """A compact table: function, arch, regs, stack, local, shared, STL, LDL, then the main loop's
    static counts (instructions, MMAs -- "n=e" when the n instructions are worth e m16n8k16 MMAs,
    as HGMMAs are --, instructions per m16n8k16-equivalent MMA, cp.async, ldmatrix, barriers,
    local memory accesses, inner loops; "-" for functions without an MMA loop), and a mark
    column."""
    marks = marks or {}
    order: dict[str, int] = {}
    for k in kernels:  # functions in the order the cubins list them, each one's archs together
        order.setdefault(k.name, len(order))
    header = ("function", "arch", "regs", "stack", "local", "smem", "STL", "LDL")
    header += ("loop", "MMA", "/MMA", "LDGSTS", "LDSM", "BAR", "lmem", "inner", "")

    def loop_cells(loop: LoopStats | None) -> tuple[str, ...]:
        if loop is None:
            return ("-",) * 8
        mma = str(loop.mma) if loop.mma_equiv in (0, loop.mma) else f"{loop.mma}={loop.mma_equiv:g}"
        counts = (loop.instructions, mma, f"{loop.per_mma:.1f}", loop.ldgsts, loop.ldsm, loop.bar, loop.local)
        return tuple(str(c) for c in counts) + (str(loop.inner_loops),)

    body = [
        (k.name, k.arch, str(k.registers), str(k.stack), str(k.local), str(k.shared), str(k.stl), str(k.ldl))
        + loop_cells(k.loop)
        + (marks.get((k.name, k.arch), ""),)
        for k in sorted(kernels, key=lambda k: (order[k.name], _arch_number(k.arch)))
    ]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = []
    for r in [header, *body]:
        cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])]
        cells += [c.rjust(w) for c, w in zip(r[2:-1], widths[2:-1])]
        cells.append(r[-1])
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
