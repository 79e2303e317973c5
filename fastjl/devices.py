"""Whether torch can use a device, and if not why: one check, one wording, shared by the
backends' availability, ``python -m fastjl.bench`` and ``python -m trak_core.demo``.

Asking torch for a CUDA device it cannot use raises deep inside torch (on a CPU-only
build: ``AssertionError: Torch not compiled with CUDA enabled``); these functions say so
up front instead.
"""

from __future__ import annotations

import torch


def device_problem(device: torch.device | str) -> str | None:
    """Why torch cannot put tensors on ``device`` (a reason phrase), or None when it can."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        return f"{str(device)!r} is not a device torch knows (e.g. cpu, cuda, cuda:0)"
    if dev.type == "cpu":
        return None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            if torch.version.cuda is None:
                build = f"torch {torch.__version__} is a CPU-only build"
            else:
                build = f"torch {torch.__version__} is built for CUDA {torch.version.cuda} but finds no GPU"
            return f"torch reports no usable CUDA device ({build})"
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            return f"there is no {dev}: torch sees {count} CUDA device{'s' if count != 1 else ''}"
        return None
    try:  # other device types (mps, xla, ...): torch knows whether it can allocate there
        torch.empty(0, device=dev)
    except Exception as exc:  # whatever torch raises, the device is unusable
        return f"torch cannot create tensors on {dev} ({_first_sentence(exc)})"
    return None


def _first_sentence(exc: Exception, limit: int = 160) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def device_option_error(
    prog: str, device: str, option: str = "--device", types: tuple[str, ...] = ("cpu", "cuda")
) -> str | None:
    """The one-line command-line error for ``option device`` when torch cannot use that
    device or ``prog`` does not run on its type (``types``); None when it is fine.

    e.g. ``fastjl.bench: --device cuda, but torch reports no usable CUDA device (torch
    2.13.0+cpu is a CPU-only build); use --device cpu``.
    """
    problem = device_problem(device)
    if problem is None and torch.device(device).type not in types:
        problem = f"{prog} runs on {' or '.join(types)} devices only"
    if problem is None:
        return None
    fix = f"use {option} cpu" + (f" or {option} cuda" if torch.cuda.is_available() else "")
    return f"{prog}: {option} {device}, but {problem}; {fix}"
