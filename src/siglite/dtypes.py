"""The one table of precision names: the short spellings users type and the canonical name each means.

Engines keep their own table of what they can run (`engines.torch.DTYPES`, `engines.cuda.PRECISIONS`, the precision
recorded in an exported folder's sidecar); they all spell a request through `canonical` first, so "bf16" means the
same everywhere. Strings only (no torch import), so that it sits below everything.
"""

from __future__ import annotations

ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp8-dynamic": "fp8"}


def canonical(dtype) -> str:
    """"bf16" -> "bfloat16", torch.float16 -> "float16", "int8" -> "int8"; unknown names pass through unchanged
    (the engine that cannot run them names its choices)."""
    name = str(dtype).removeprefix("torch.")
    return ALIASES.get(name, name)
