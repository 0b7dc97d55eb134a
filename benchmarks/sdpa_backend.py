"""Which attention kernel a training step reaches, per dtype, read off the profiler's op names.

`F.scaled_dot_product_attention` picks a backend per call (flash, memory-efficient, cuDNN or
the unfused math path) from the dtype, head size, mask and GQA layout, and says nothing:
a step that falls to the math kernel only runs slower and keeps a (B, H, T, T) matrix. The
dispatched op's name tells which one ran. The model is built as training builds it (the
default `kernels`, which leave CUDA tensors to SDPA); the batch does not enter the choice,
so a short one keeps the fp32 math path's memory small.

    python -m benchmarks.sdpa_backend                     # smollm2_135m, 2x2048, fp32 and bf16
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from benchmarks.common import (
    DTYPES,
    add_device_arg,
    add_dtypes_arg,
    add_preset_arg,
    markdown_table,
    shape,
)
from src.errors import exit_on_user_error
from src.kernels import KERNELS, apply_cpu_kernels
from src.models import SmolLM2, SmolLM2Config
from src.serving.inference import resolve_device

BACKENDS = ("flash", "efficient", "cudnn", "math")  # as they appear in the dispatched ops' names
# The fused kernels that take bf16 with grouped key/value heads: PyTorch tries cuDNN's first
# on Hopper and later GPUs with cuDNN 9.15 or newer, flash's first elsewhere.
FUSED_GQA = ("flash", "cudnn")


def attention_ops(model: SmolLM2, inputs: torch.Tensor, dtype: torch.dtype) -> Counter[str]:
    """Calls of each attention op in one forward + backward, bf16 under autocast as bf16-mixed trains."""
    device = inputs.device
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # ATen ops are recorded on the host
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            hidden = model.hidden_states(inputs)  # (B, T, C)
        hidden.float().square().mean().backward()
    return Counter(e.name for e in prof.events() if e.name.startswith("aten::") and "attention" in e.name)


def backends(ops: Counter[str]) -> list[str]:
    """The SDPA backends named by the ops (the composite `scaled_dot_product_attention` names none)."""
    return [b for b in BACKENDS if any(b in name for name in ops)]


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_preset_arg(parser, "smollm2_135m")
    parser.add_argument("--shape", type=shape, default="2x2048", help="BATCHxSEQ")
    add_dtypes_arg(parser)
    add_device_arg(parser)
    args = parser.parse_args()
    device = resolve_device(args.device, "--device ")

    torch.manual_seed(0)
    model = apply_cpu_kernels(SmolLM2(SmolLM2Config.from_preset(args.preset)), KERNELS).to(device).train()
    B, T = args.shape
    inputs = torch.randint(0, model.config.vocab_size, (B, T), device=device)
    print(f"## Attention kernel of a training step: {args.preset}, {B}x{T}, forward + backward\n")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {where}; torch {torch.__version__}\n")
    rows, verdicts = [], []
    for name in args.dtypes:
        ops = attention_ops(model, inputs, DTYPES[name])
        found = backends(ops)
        listed = ", ".join(f"`{op}` x{n}" for op, n in sorted(ops.items())) or "none"
        rows.append([name, listed, ", ".join(found) or "none (not SDPA)"])
        if device.type != "cuda":
            verdicts.append(f"- {name}: skipped: no CUDA (on CPU the kernels above ran)")
        elif name == "bf16":
            fused = len(found) == 1 and found[0] in FUSED_GQA
            verdicts.append(f"- bf16 takes a fused kernel (flash or cuDNN): {'yes' if fused else 'NO'}")
        else:
            verdicts.append(f"- {name} stays off the math kernel: {'NO' if 'math' in found else 'yes'}")
    print(markdown_table(["dtype", "attention ops (calls per step)", "backend"], rows))
    print("\n" + "\n".join(verdicts))


if __name__ == "__main__":
    main()
