"""How INT8 weights are stored so that this CPU's integer matmul is exact: signed (u8 x s8 kernels) where its
dot products accumulate exactly, unsigned offset by 128 (u8 x u8 kernels) where u8 x s8 can saturate.

ONNX Runtime's (and oneDNN's) u8 x s8 kernels on x86 CPUs without VNNI use AVX2's ``VPMADDUBSW``, which sums two
u8 * s8 products into a saturating int16: 2 * 255 * 127 = 64770 > 32767, so full-range 8-bit weights can overflow
(measured on an AVX2 EPYC: a tiny model's pooled cosine drops from 0.9998 simulated to 0.95 in the runtime). There
the same 8-bit weights are stored as uint8 ``q + 128`` with zero point 128: ONNX Runtime then runs its u8 x u8
kernels, which widen to int16 before multiplying (``VPMADDWD``, int32 sums) and are exact, at about 5-10% more time
per matmul than u8 x s8 (measured there: a 616 x 512 x 2048 product 10.0 vs 9.5 ms; an earlier recipe kept 8-bit
precision out of reach with 7-bit weights instead). VNNI (``VPDPBUSD``, AVX512-VNNI or AVX-VNNI) and AMX accumulate
u8 x s8 into int32 directly, and ARM's dot-product instructions (``SDOT``/``UDOT``) do too, so there the signed form
is exact and fastest. Both forms hold the same numbers; engines convert losslessly at load time when a folder meets
a CPU that wants the other (`siglite.engines.graph`).

`detect` reads the CPU flags (``/proc/cpuinfo``); ``SIGLITE_CPU_ISA`` forces an answer, to quantize for another
machine or to test both branches (e.g. ``SIGLITE_CPU_ISA=avx2``; OpenVINO/oneDNN can likewise be held to a lower ISA
with ``ONEDNN_MAX_CPU_ISA``).
"""

from __future__ import annotations

import contextlib
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
WEIGHT_MAX = 127  # symmetric 8-bit weights, in either storage form
# the largest signed weight that u8 x s8 kernels multiply exactly even where pair sums saturate (2 * 255 * 63 < 32767):
# folders quantized on AVX2 CPUs by earlier siglite versions hold such 7-bit weights, which every CPU serves as they are
SAFE_SIGNED_MAX = 63


@dataclass(frozen=True)
class CpuIsa:
    """The instruction set INT8 is quantized for.

    Attributes:
        name: a key of `EXACT`.
        exact: u8 x s8 products accumulate without saturation, so signed 8-bit weights are exact.
        forced: set by ``SIGLITE_CPU_ISA`` rather than detected.
    """

    name: str
    exact: bool
    forced: bool = False

    @property
    def weight_dtype(self) -> str:
        """How 8-bit weights are stored to be exact and fast here: "int8" (u8 x s8 kernels) or "uint8" (offset by
        128, u8 x u8 kernels)."""
        return "int8" if self.exact else "uint8"

    def to_dict(self) -> dict:
        return {**asdict(self), "weight_dtype": self.weight_dtype}


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


@contextlib.contextmanager
def on_this_cpu():
    """Within: `detect` answers for the CPU it runs on, whatever ``SIGLITE_CPU_ISA`` forces; for measuring here a
    folder written for another CPU (engines then convert its weights to the form this CPU runs exactly)."""
    saved = os.environ.pop(ENV, None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ[ENV] = saved
