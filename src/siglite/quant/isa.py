"""Which weight range INT8 may use on this CPU: full 8-bit where the integer dot products accumulate exactly, 7-bit
where they can saturate.

ONNX Runtime's (and oneDNN's) u8 x s8 kernels on x86 CPUs without VNNI use AVX2's ``VPMADDUBSW``, which sums two
u8 * s8 products into a saturating int16: 2 * 255 * 127 = 64770 > 32767, so full-range weights can overflow (measured
on an AVX2 EPYC: a tiny model's pooled cosine drops from 0.9998 simulated to 0.95 in the runtime). With weights limited
to +-63 the pair sum stays below 32767 and the result is exact. VNNI (``VPDPBUSD``, AVX512-VNNI or AVX-VNNI) and AMX
accumulate into int32 directly, and ARM's dot-product instructions (``SDOT``/``UDOT``) do too, so there full +-127
weights are exact and give one more bit of weight precision.

`detect` reads the CPU flags (``/proc/cpuinfo``); ``SIGLITE_CPU_ISA`` forces an answer, to quantize for another
machine or to test both branches (e.g. ``SIGLITE_CPU_ISA=avx2``; OpenVINO/oneDNN can likewise be held to a lower ISA
with ``ONEDNN_MAX_CPU_ISA``).
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass

from ..errors import SigliteError

ENV = "SIGLITE_CPU_ISA"
# name -> whether u8 x s8 dot products accumulate exactly (no int16 pair saturation); best first, as detected
EXACT = {"amx": True, "avx512_vnni": True, "avx_vnni": True, "arm_dotprod": True, "avx2": False, "other": False}
# /proc/cpuinfo flag -> name
FLAGS = (("amx_int8", "amx"), ("avx512_vnni", "avx512_vnni"), ("avx_vnni", "avx_vnni"), ("asimddp", "arm_dotprod"),
         ("avx2", "avx2"))
FULL_WEIGHT_MAX, SAFE_WEIGHT_MAX = 127, 63


@dataclass(frozen=True)
class CpuIsa:
    """The instruction set INT8 is quantized for.

    Attributes:
        name: a key of `EXACT`.
        exact: u8 x s8 products accumulate without saturation, so full 8-bit weights are safe.
        forced: set by ``SIGLITE_CPU_ISA`` rather than detected.
    """

    name: str
    exact: bool
    forced: bool = False

    @property
    def weight_max(self) -> int:
        """The largest INT8 weight magnitude that is exact here: 127 (8 bits) or 63 (7 bits)."""
        return FULL_WEIGHT_MAX if self.exact else SAFE_WEIGHT_MAX

    def to_dict(self) -> dict:
        return {**asdict(self), "weight_max": self.weight_max}


def from_flags(flags: set[str] | str) -> CpuIsa:
    """The best INT8 instruction set among CPU feature flags (as /proc/cpuinfo spells them)."""
    flags = set(flags.split()) if isinstance(flags, str) else set(flags)
    name = next((n for flag, n in FLAGS if flag in flags), "other")
    return CpuIsa(name, EXACT[name])


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("flags", "Features"):  # x86, ARM
                    return set(value.split())
    except OSError:
        pass
    return set()


def detect() -> CpuIsa:
    """This CPU's INT8 instruction set, or the one ``SIGLITE_CPU_ISA`` names.

    Raises:
        SigliteError: ``SIGLITE_CPU_ISA`` names an unknown instruction set.
    """
    forced = os.environ.get(ENV, "").strip().lower()
    if forced:
        if forced not in EXACT:
            raise SigliteError(f"{ENV}={forced!r}: unknown instruction set; choose one of {', '.join(EXACT)}")
        return CpuIsa(forced, EXACT[forced], forced=True)
    flags = _cpu_flags()
    if not flags and platform.machine().lower() in ("arm64", "aarch64"):  # macOS: no cpuinfo; Apple cores have dotprod
        return CpuIsa("arm_dotprod", True)
    return from_flags(flags)
