"""One training step of our SmolLM2 against transformers' LlamaForCausalLM on the same weights.

A step is forward + loss + backward + AdamW step + zero_grad, with the same fused-when-
available AdamW for both, so the ratio measures the model and loss code only. Both models
score the same T-1 targets (transformers shifts `labels` itself; we mask the last target).

    python -m benchmarks.train_step                      # 2x1024 and 4x256, fp32 and bf16
    python -m benchmarks.train_step --shapes 2x1024 --dtypes bf16 --repeats 7 --compile
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
from collections.abc import Callable

import torch
from torch import nn

from benchmarks.common import (
    DTYPES,
    PYTORCH_KERNELS,
    STEADY_PAGE_FAULTS,
    add_common_args,
    add_compile_args,
    add_preset_arg,
    compile_note,
    machine_line,
    markdown_table,
    matmul_peak_flops,
    matmul_size,
    peak_memory_bytes,
    positive_int,
    setup,
    shape,
    shapes,
    time_interleaved,
)
from src.errors import exit_on_user_error
from src.kernels import KERNELS, apply_cpu_kernels, loss_matmuls
from src.kernels.loss import lm_cross_entropy
from src.kernels.probes import Workload
from src.kernels.selection import choose_kernels, kept, summary
from src.models import SmolLM2, SmolLM2Config
from src.training.device_peaks import peak_flops
from src.training.parallelize import apply_compile
from tests.models.llama_twin import llama_twin  # the same twin the parity tests check

COMPILED = "ours compiled"


def loss_fns(
    models: dict[str, nn.Module],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int,
    matmuls: dict[str, bool],
    compile_backend: str = "inductor",
) -> dict[str, Callable[[], torch.Tensor]]:
    """The training loss of each model: ours through the chunked head + loss, theirs via `labels`.

    The compiled model gets the compiled loss, as `compile=true` training does (src/training/lit_module.py);
    the loss's matmuls are set by `matmuls` (`loss_matmuls` of the kept kernels), except for
    the model with PyTorch kernels.
    """
    compiled_cross_entropy = torch.compile(lm_cross_entropy, backend=compile_backend)

    def ours(model: SmolLM2, cross_entropy: Callable[..., torch.Tensor], matmuls: dict) -> torch.Tensor:
        hidden = model.hidden_states(inputs)  # (B, T, C)
        return cross_entropy(hidden, model.lm_head.weight, targets, chunk_size=chunk_size, **matmuls)

    def loss_fn(name: str, model: nn.Module) -> Callable[[], torch.Tensor]:
        if name == "transformers":
            return lambda: model(input_ids=inputs, labels=inputs).loss
        cross_entropy = compiled_cross_entropy if name == COMPILED else lm_cross_entropy
        return lambda: ours(model, cross_entropy, {} if name == PYTORCH_KERNELS else matmuls)

    return {name: loss_fn(name, model) for name, model in models.items()}


def make_step(
    loss_fn: Callable[[], torch.Tensor], optimizer: torch.optim.Optimizer, device: torch.device, dtype
) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = loss_fn()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def adamw(model: nn.Module) -> torch.optim.Optimizer:
    # Small LR: the weights barely move, so every repeat times the same model.
    return torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)


def add_our_step_args(parser: argparse.ArgumentParser) -> None:
    """--preset, --shape, --dtype and --chunk-size of one training step of ours (`our_step`)."""
    add_preset_arg(parser, "smollm2_135m")
    parser.add_argument("--shape", type=shape, default="2x1024", help="BATCHxSEQ")
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    add_chunk_size_arg(parser)


def add_chunk_size_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--chunk-size", type=positive_int, default=1024, help="tokens per loss chunk")


def plain_model_and_batch(
    args: argparse.Namespace, device: torch.device
) -> tuple[SmolLM2, torch.Tensor, torch.Tensor]:
    """Our plain model of --preset (seed 0) and random (B, T) inputs and targets of --shape."""
    torch.manual_seed(0)
    plain = SmolLM2(SmolLM2Config.from_preset(args.preset)).to(device).train()
    B, T = args.shape
    x = torch.randint(0, plain.config.vocab_size, (B, T + 1), device=device)
    return plain, x[:, :T], x[:, 1:]


def our_step(
    model: SmolLM2,
    kernels: list[str],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    args: argparse.Namespace,
    device: torch.device,
) -> Callable[[], torch.Tensor]:
    """One training step of `model` with `kernels` applied (the loss's matmuls following them)."""
    loss = loss_fns({"ours": model}, inputs, targets, args.chunk_size, loss_matmuls(kernels))["ours"]
    return make_step(loss, adamw(model), device, DTYPES[args.dtype])


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_preset_arg(parser, "smollm2_135m")
    parser.add_argument("--shapes", type=shapes, default="2x1024,4x256", help="comma-separated BATCHxSEQ")
    add_chunk_size_arg(parser)
    parser.add_argument(
        "--matmul-size", type=positive_int, default=None, help="of the peak's matmul (4096, GPU 8192)"
    )
    add_compile_args(parser, rows="ours compiled per block")
    parser.add_argument(
        "--pytorch-kernels",
        action="store_true",
        help="add a row for ours without the CPU kernels (kernels=[])",
    )
    add_common_args(parser, repeats=5)
    args = parser.parse_args()
    device = setup(args)

    torch.manual_seed(0)
    plain = SmolLM2(SmolLM2Config.from_preset(args.preset)).to(device).train()
    theirs = llama_twin(plain).to(device).train()
    config, num_params = plain.config, plain.num_parameters()

    print(f"## Train step: {args.preset} ({num_params / 1e6:.1f}M), forward + loss + backward + AdamW\n")
    print(f"machine: {machine_line(device)}")
    timing = f"warm-up {args.warmup}, repeats {args.repeats} (interleaved), loss chunk {args.chunk_size}"
    print(f"{timing}{compile_note(args)}\n")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        size = args.matmul_size or matmul_size(device)
        peak_before = matmul_peak_flops(dtype, device, size)
        datasheet = peak_flops(device, "bf16-mixed") if dtype == torch.bfloat16 else None
        measured = []  # (B, T, timings, peak memory, first loss) of each shape
        for B, T in args.shapes:
            x = torch.randint(0, config.vocab_size, (B, T + 1), device=device)
            inputs, targets = x[:, :T], x[:, 1:].clone()
            targets[:, -1] = -100  # transformers scores T-1 positions; so do we

            # Ours with the kernels that training keeps for this shape and dtype (kernels_policy=measure).
            workload = Workload(config, B, T, dtype, training=True)
            decisions = choose_kernels(KERNELS, workload, on_cpu=device.type == "cpu")
            print(f"{B}x{T} {dtype_name}: {summary(decisions, workload)}")
            ours = apply_cpu_kernels(copy.deepcopy(plain), kept(decisions))
            models = {"ours": ours, "transformers": theirs}
            if args.compile:  # the kernels that act in a graph, as compile=true trains
                compiled = dataclasses.replace(workload, compiled=True)
                in_graph = kept(choose_kernels(KERNELS, compiled, on_cpu=device.type == "cpu"))
                models[COMPILED] = apply_cpu_kernels(copy.deepcopy(plain), in_graph)
                # in place, per block: state_dict keys stay the same
                apply_compile(models[COMPILED], backend=args.compile_backend)
            if args.pytorch_kernels:
                models[PYTORCH_KERNELS] = plain
            matmuls = loss_matmuls(kept(decisions))
            losses = loss_fns(models, inputs, targets, args.chunk_size, matmuls, args.compile_backend)
            steps = {name: make_step(fn, adamw(models[name]), device, dtype) for name, fn in losses.items()}
            first = {name: step().item() for name, step in steps.items()}
            timings = time_interleaved(steps, device, args.warmup, args.repeats)
            memory = {name: peak_memory_bytes(step, device) for name, step in steps.items()}
            measured.append((B, T, timings, memory, first))
        # The peak is the machine's best: timed again after the rows, so that a moment of
        # contention during one short timing cannot inflate every MFU of this dtype.
        peak_after = matmul_peak_flops(dtype, device, size)
        peak = max(peak_before, peak_after)
        print(
            f"{dtype_name} matmul peak measured ({size}x{size}x{size}): {peak_before / 1e12:.2f} TFLOP/s"
            f" before the rows, {peak_after / 1e12:.2f} after; MFU is against {peak / 1e12:.2f}"
        )
        for B, T, timings, memory, first in measured:
            reference = timings["transformers"].steady().median
            for name, timing in timings.items():
                steady = timing.steady()
                tokens_per_s = B * T / steady.median
                achieved = tokens_per_s * config.training_flops_per_token(T)
                mfu = f"{100 * achieved / peak:.1f}%"
                if datasheet:
                    mfu += f" ({100 * achieved / datasheet:.1f}% of datasheet)"
                left_out = "" if steady is timing else f", {len(steady.seconds)} of {len(timing.seconds)}"
                rows.append(
                    [
                        f"{B}x{T}",
                        dtype_name,
                        name,
                        f"{tokens_per_s:,.0f}",
                        steady.cell() + left_out,
                        timing.page_faults_cell(),
                        f"{memory[name] / 2**20:,.0f}",
                        mfu,
                        f"{reference / steady.median:.2f}x",
                        f"{first[name]:.4f}",
                    ]
                )
    headers = [
        "BxT",
        "dtype",
        "model",
        "tokens/s",
        "s/step (±half spread)",
        "page faults/step",
        "peak MiB",
        "MFU",
        "vs HF",
        "loss",
    ]
    print("\n" + markdown_table(headers, rows))
    print(
        "\npeak MiB: tensors allocated during one step above those alive before it (weights and AdamW"
        " state excluded; gradients, created in the step, included); CPU: from the profiler's"
        " allocation events, CUDA: allocator peak. MFU is against the faster of the two large-matmul"
        " peaks above."
        " page faults/step: the host's minor page faults in each timed step, fewest-most: a step"
        " that faults pays for memory the OS hands it afresh, which a run's steady state does not,"
        f" so s/step, tokens/s, MFU and vs HF are of the steps with at most {STEADY_PAGE_FAULTS:,}"
        ' ("3 of 5" where some had more).'
    )


if __name__ == "__main__":
    main()
