"""``hardware.precision`` on a CPU: whether this CPU computes in bf16, the start-up check and the start-up line.

A CPU with bf16 instructions (x86: ``avx512_bf16`` or AMX's ``amx_bf16``; ARM: ``bf16``) runs Lightning's
``bf16-mixed`` (``torch.autocast("cpu", dtype=torch.bfloat16)`` around each training step, float32 weights and
AdamW state) with oneDNN's bf16 matmuls: the update of a real model about 1.5 times as fast as in float32
(docs/speed.md). Without them torch emulates bf16 by converting to and from float32, which gains nothing over
float32 (and is usually slower), so ``check_cpu_precision`` refuses a bf16 precision there (one line naming ``hardware.precision`` and what to use).
``bf16-true`` keeps the weights and AdamW's state in bf16 as well: an update smaller than about 1/256 of a
weight rounds away, so it is allowed (where bf16 runs) but warned about (`bf16_true_warning`).
`startup_line` is what a run says about its machine when it starts. Reading ``/proc/cpuinfo`` is the fallback
when torch cannot say (``torch.cpu._is_avx512_bf16_supported``, ``_is_amx_tile_supported``).
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

#: the precisions that compute in bf16
BF16 = ("bf16-mixed", "bf16-true")
#: /proc/cpuinfo flags that mean bf16 arithmetic in hardware (x86 ``flags``, ARM ``Features``)
BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


def _cpuinfo_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    flags: set[str] = set()
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() in ("flags", "features"):
            flags.update(value.split())
    return flags


@functools.lru_cache(maxsize=1)
def cpu_bf16_support() -> str | None:
    """The bf16 instructions this CPU has (``"amx_bf16"``, ``"avx512_bf16"``, ``"bf16"`` on ARM), the best
    first; None when it has none (bf16 would be emulated)."""
    import torch

    probes = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, probe in probes:
        fn = getattr(torch.cpu, probe, None)
        try:
            if fn is not None and fn():
                return name
        except RuntimeError:  # a build without the probe's backend
            pass
    flags = _cpuinfo_flags()
    arm = platform.machine().lower() in ("aarch64", "arm64")
    return next((f for f in BF16_FLAGS if f in flags and (f != "bf16" or arm)), None)


def runs_on_cpu(hw, cuda: bool) -> bool:
    """Whether ``hardware`` puts the run on the CPU (``accelerator=cpu``, or ``auto`` without CUDA)."""
    return hw.accelerator == "cpu" or (hw.accelerator == "auto" and not cuda)


def check_cpu_precision(hw, error: type[Exception]) -> None:
    """Raise ``error`` (one line) when a bf16 ``hardware.precision`` asks a CPU without bf16 instructions."""
    if hw.precision not in BF16 or cpu_bf16_support() is not None:
        return
    raise error(f"hardware.precision={hw.precision}: this CPU has no bf16 instructions (none of "
                f"{', '.join(BF16_FLAGS)} in /proc/cpuinfo): torch would emulate bf16, which gains nothing over float32; "
                f"use hardware.precision=32-true")


def bf16_true_warning(hw) -> str | None:
    """The warning a ``bf16-true`` run gets (None otherwise): its weights and optimizer state are bf16."""
    if hw.precision != "bf16-true":
        return None
    return ("hardware.precision=bf16-true keeps the weights and AdamW's state in bf16 (8 significant bits): an "
            "update smaller than about 1/256 of a weight rounds away (a step of 1e-5 leaves 98% of SmolLM2-135M's "
            "weights unchanged, docs/models.md); hardware.precision=bf16-mixed computes in bf16 with float32 weights")


def startup_line(hw, model_name: str, cuda: bool) -> str:
    """What a run says about its machine when it starts: the accelerator, the precision, the torch threads and,
    on a CPU, its bf16 instructions; a real model trained in float32 on a CPU with bf16 is told about
    ``bf16-mixed`` (not ``model=tiny``: its default and recorded results are float32)."""
    import torch

    on_cpu = runs_on_cpu(hw, cuda)
    where = "cpu" if on_cpu else str(hw.accelerator)
    line = (f"hardware: {where} × {hw.devices * hw.num_nodes}, precision {hw.precision}, "
            f"{torch.get_num_threads()} torch thread(s)")
    if not on_cpu:
        return line
    bf16 = cpu_bf16_support()
    line += f", CPU bf16: {bf16 or 'none'}"
    if bf16 and hw.precision in ("32-true", "32") and model_name != "tiny":
        line += " (hardware.precision=bf16-mixed updates a real model about 1.5x faster on such a CPU: docs/models.md)"
    return line
