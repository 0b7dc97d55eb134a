"""Which SDPA kernels a piece of code runs, read from the profiler rather than predicted.

`F.scaled_dot_product_attention` picks flash, memory-efficient, cuDNN or math per call,
silently. The pick shows as an `aten::_scaled_dot_product_*` op in the profiler, eager or
compiled, except math under `torch.compile`, which inductor decomposes into plain
matmuls: there a step that attends but shows no fused op ran the math kernel.
"""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile

SDPA_OP_PREFIX = "aten::_scaled_dot_product_"
MATH = "aten::_scaled_dot_product_attention_math"  # and its fused-op-free compiled form


def sdpa_kernels(fn: Callable[[], object]) -> set[str]:
    """Names of the SDPA ops that one call of `fn` runs (the dispatcher records them on the
    host for every device), e.g. {'aten::_scaled_dot_product_flash_attention'}."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages() if e.key.startswith(SDPA_OP_PREFIX)}
