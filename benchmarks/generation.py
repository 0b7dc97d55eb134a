"""Greedy decoding speed: our `generate` against transformers' `generate` on the same weights.

Random prompts of one length (batch 1 by default), a fixed number of new tokens (no EOS), random
weights of the preset's size. Tokens/s counts new tokens of all rows over the whole call
(prefill included). The outputs are compared token by token with transformers': the last
column gives, of each row's new tokens, how many lead before the first that differs (the fewest
over the batch), so the speed-up is for the same work: in fp32 all of them; in bf16 the models
round differently and greedy decoding follows the first differing argmax.

    python -m benchmarks.generation                       # fp32 and bf16 weights, 128 new tokens
    python -m benchmarks.generation --dtypes bf16 --new-tokens 256 --repeats 5 --batches 1,8
    python -m benchmarks.generation --pytorch-kernels     # and ours without the CPU kernels
"""

from __future__ import annotations

import argparse
import copy

import torch

from benchmarks.common import (
    DTYPES,
    PYTORCH_KERNELS,
    add_common_args,
    add_preset_arg,
    machine_line,
    markdown_table,
    positive_int,
    positive_ints,
    setup,
    time_interleaved,
)
from src.errors import exit_on_user_error
from src.kernels import applied_kernels
from src.models import SmolLM2, SmolLM2Config, generate
from src.serving.inference import ready_for_inference
from tests.models.llama_twin import llama_twin  # the same twin the parity tests check


def leading_agreement(tokens: torch.Tensor, expected: torch.Tensor) -> int:
    """How many leading columns of `tokens` (B, N) equal `expected`'s in every row."""
    differs = (tokens != expected).any(dim=0).nonzero()
    return int(differs[0]) if len(differs) else tokens.shape[1]


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_preset_arg(parser, "smollm2_135m")
    parser.add_argument("--prompt-len", type=positive_int, default=32)
    parser.add_argument("--new-tokens", type=positive_int, default=128)
    parser.add_argument("--batches", type=positive_ints, default="1", help="comma-separated batch sizes")
    parser.add_argument(
        "--pytorch-kernels", action="store_true", help="add a row for ours without the CPU kernels"
    )
    add_common_args(parser, repeats=3)
    args = parser.parse_args()
    device = setup(args)

    torch.manual_seed(0)
    base = SmolLM2(SmolLM2Config.from_preset(args.preset)).eval()
    batches = args.batches
    prompts = torch.randint(0, base.config.vocab_size, (max(batches), args.prompt_len), device=device)
    n = args.new_tokens

    print(f"## Greedy generation: {args.preset}, prompt {args.prompt_len}, {n} new tokens per row\n")
    print(f"machine: {machine_line(device)}")
    print(f"warm-up {args.warmup}, repeats {args.repeats} (interleaved)\n")
    rows = []
    for dtype_name in args.dtypes:
        dtype = DTYPES[dtype_name]
        ours = SmolLM2(base.config).eval()
        ours.load_state_dict(base.state_dict())
        theirs = llama_twin(ours).to(device, dtype)
        plain = copy.deepcopy(ours).to(device, dtype)
        ours = ready_for_inference(ours, device, dtype)  # as generate and the app run it
        print(f"{dtype_name}: CPU kernels kept: {', '.join(applied_kernels(ours)) or 'none'}")
        for batch in batches:
            prompt = prompts[:batch]
            runs = {
                "ours": lambda m=ours, p=prompt: generate(m, p, n),
                "transformers": lambda m=theirs, p=prompt: m.generate(
                    p, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=0
                ),
            }
            if args.pytorch_kernels:
                runs[PYTORCH_KERNELS] = lambda m=plain, p=prompt: generate(m, p, n)
            with torch.inference_mode():
                outputs = {name: run() for name, run in runs.items()}
                timings = time_interleaved(runs, device, args.warmup, args.repeats)
            expected = outputs["transformers"][:, -n:]
            reference = timings["transformers"].median
            for name, timing in timings.items():
                rows.append(
                    [
                        batch,
                        dtype_name,
                        name,
                        f"{batch * n / timing.median:,.1f}",
                        timing.cell(),
                        f"{reference / timing.median:.2f}x",
                        "reference"
                        if name == "transformers"
                        else f"{leading_agreement(outputs[name][:, -n:], expected)}/{n}",
                    ]
                )
    headers = [
        "batch",
        "dtype",
        "model",
        "new tokens/s",
        "s/call (±half spread)",
        "vs HF",
        "same tokens as HF",
    ]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
