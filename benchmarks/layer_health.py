"""What per-layer health costs a training step: `python -m benchmarks.layer_health`

Times one optimizer step of a preset (forward, backward, clipping, fused AdamW) and, apart,
the work `LayerHealth` (src/callbacks/layer_health.py) adds to a step that is logged: the
per-layer gradient and weight norms, the copy of the weights and the update's norms, and the
one read to the host. It runs only at log steps, so its cost per step is that time divided by
the log interval; the last row prints it as a share of the step, measured in the same process.
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch

from benchmarks.common import (
    add_device_arg,
    add_host_args,
    add_preset_arg,
    machine_line,
    markdown_table,
    non_negative_int,
    positive_int,
    setup,
    time_interleaved,
)
from src.callbacks.layer_health import LayerHealth
from src.errors import exit_on_user_error
from src.kernels.loss import lm_cross_entropy
from src.models import SmolLM2, SmolLM2Config


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_arg(parser, "smollm2_135m", flag="--model")
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--seq-len", type=positive_int, default=2048)
    parser.add_argument(
        "--log-every", type=positive_int, default=10, help="trainer.log_every_n_steps (default 10)"
    )
    parser.add_argument("--dtype", default="bf16", choices=["fp32", "bf16"], help="autocast dtype")
    parser.add_argument("--warmup", type=non_negative_int, default=1)
    parser.add_argument("--steps", type=positive_int, default=5, help="timed steps (and health calls)")
    add_device_arg(parser)
    add_host_args(parser)
    args = parser.parse_args()
    device = setup(args)

    torch.manual_seed(0)
    config = SmolLM2Config.from_preset(args.model)
    model = SmolLM2(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.1, fused=True)
    batch = torch.randint(config.vocab_size, (args.batch_size, args.seq_len + 1), device=device)  # (B, T + 1)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            hidden = model.hidden_states(batch[:, :-1])  # (B, T, C)
            loss = lm_cross_entropy(hidden, model.lm_head.weight, batch[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()  # the gradients stay, for the health call to read

    health = LayerHealth()
    logged: dict[str, float] = {}
    module = SimpleNamespace(model=model, log_dict=logged.update)
    trainer = SimpleNamespace(  # at the step before a log step
        global_step=args.log_every - 1, log_every_n_steps=args.log_every, precision_plugin=None
    )
    health.setup(trainer, module, "fit")
    health.on_fit_start(trainer, module)

    def health_at_a_log_step() -> None:
        health.on_before_optimizer_step(trainer, module, optimizer)
        health.on_train_batch_end(trainer, module)  # the weights did not move: the same work

    timings = time_interleaved(
        {"step": step, "health": health_at_a_log_step}, device, warmup=args.warmup, repeats=args.steps
    )
    step_s, health_s = timings["step"].median, timings["health"].median
    per_step = health_s / args.log_every
    params = sum(p.numel() for p in model.parameters())
    print(machine_line(device))
    print(
        f"{args.model}: {params:,} parameters, {len(health.layers)} layers, batch {args.batch_size} x "
        f"{args.seq_len} tokens, {args.dtype}; {len(logged)} health metrics per log step\n"
    )
    rows = [
        ["training step (reference)", timings["step"].cell(), "1.0000"],
        ["health, at a log step", timings["health"].cell(), f"{health_s / step_s:.4f}"],
        [f"health per step, logged every {args.log_every}", f"{per_step:.4f}", f"{per_step / step_s:.4f}"],
    ]
    print(markdown_table(["", "s (median, ±half spread)", "x step"], rows))
    print(f"\nhealth at log_every_n_steps={args.log_every}: {per_step / step_s:.3%} of a step")


if __name__ == "__main__":
    main()
