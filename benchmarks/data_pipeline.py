"""Does the streaming pipeline keep up with training? `python -m benchmarks.data_pipeline`

Measures, in one run on this machine: the tokens/s the stream serves alone (local parquet
shards of cosmopedia-v2's schema, read, tokenized, packed and batched, with 0 and 2 workers),
and the tokens/s one bf16-autocast training step of smollm2_135m consumes. Prints a markdown
table with their ratio; below 1 the accelerator would wait for data. On a GPU the step is far
faster than on this CPU: pass its tokens/s with `--train-tokens-per-s` (per device).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from itertools import islice
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from benchmarks.common import non_negative_int, positive_float, positive_int
from src.data.stream_datamodule import StreamDataModule
from src.errors import exit_on_user_error
from src.kernels import KERNELS, apply_cpu_kernels
from src.kernels.loss import lm_cross_entropy
from src.models import SmolLM2, SmolLM2Config

WORDS = (
    "the of and to in is that for it as was with be by on not he this are or his from at which but have an "
    "they you were her all she there would their we him been has when who will more no if out so said what "
    "up its about into than them can only other new some could time these two may then do first any my now "
    "such like our over man me even most made after also did many before must through back years where much "
    "your way well down should because each just those people how too little state good very make world "
    "still "
    "own see men work long get here between both life being under never day same another know while last "
    "photosynthesis energy students chapter example history mathematics equation culture system process"
).split()


def write_corpus(folder: Path, docs: int, shards: int, seed: int = 0) -> str:
    """Parquet shards of cosmopedia-v2's schema; documents of ~50 to ~2000 words (mean ~500)."""
    rng = random.Random(seed)
    texts = []
    for i in range(docs):
        words = min(2000, max(50, int(rng.lognormvariate(6.0, 0.6))))
        sentences = [" ".join(rng.choices(WORDS, k=12)).capitalize() + "." for _ in range(words // 12)]
        texts.append(f"Lesson {i}: " + " ".join(sentences))
    per_shard = -(-docs // shards)
    for s in range(shards):
        rows = texts[s * per_shard : (s + 1) * per_shard]
        table = pa.table(
            {
                "prompt": ["Write a textbook unit"] * len(rows),
                "text": rows,
                "token_length": pa.array([len(t.split()) for t in rows], pa.int64()),
                "audience": ["college_students"] * len(rows),
                "format": ["textbook"] * len(rows),
                "seed_data": ["benchmark"] * len(rows),
            }
        )
        pq.write_table(table, folder / f"train-{s:05d}-of-{shards:05d}.parquet")
    return str(folder / "*.parquet")


def stream_tokens_per_s(data_files: str, workers: int, seq_len: int, batch_size: int, batches: int) -> float:
    """Steady-state tokens/s: from the first batch (workers started) to `batches` more."""
    dm = StreamDataModule(
        "local", seq_len, batch_size, data_files=data_files, val_documents=10, num_workers=workers
    )
    dm.setup()
    loader = iter(dm.train_dataloader())
    dm.on_before_batch_transfer(next(loader), 0)
    start = time.perf_counter()
    for batch in islice(loader, batches):
        dm.on_before_batch_transfer(batch, 0)
    return batches * batch_size * seq_len / (time.perf_counter() - start)


def train_tokens_per_s(seq_len: int, batch_size: int, steps: int) -> float:
    """One AdamW step of smollm2_135m under bf16 autocast on the CPU, after one warm-up step."""
    config = SmolLM2Config.from_preset("smollm2_135m")
    model = apply_cpu_kernels(SmolLM2(config), KERNELS)  # as training runs by default
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = torch.randint(0, config.vocab_size, (batch_size, seq_len + 1))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = model.hidden_states(batch[:, :-1])  # (B, T, C)
            loss = lm_cross_entropy(hidden, model.lm_head.weight, batch[:, 1:], onednn=True)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch_size * seq_len / (time.perf_counter() - start)


@exit_on_user_error
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=positive_int, default=3000)
    parser.add_argument("--shards", type=positive_int, default=8)
    parser.add_argument("--seq-len", type=positive_int, default=2048)
    parser.add_argument("--batch-size", type=positive_int, default=8)
    parser.add_argument("--batches", type=positive_int, default=40, help="batches timed per pipeline setting")
    parser.add_argument(
        "--workers", type=non_negative_int, nargs="+", default=[0, 2], help="0: in the main process"
    )
    parser.add_argument("--train-seq-len", type=positive_int, default=2048)
    parser.add_argument("--train-batch-size", type=positive_int, default=1)
    parser.add_argument("--train-steps", type=positive_int, default=2)
    parser.add_argument(
        "--train-tokens-per-s", type=positive_float, help="skip the step measurement; use this rate"
    )
    args = parser.parse_args()

    if args.train_tokens_per_s:
        train, train_label = args.train_tokens_per_s, "given (--train-tokens-per-s)"
    else:
        train = train_tokens_per_s(args.train_seq_len, args.train_batch_size, args.train_steps)
        train_label = f"smollm2_135m step, bf16 autocast, CPU, {args.train_batch_size} x {args.train_seq_len}"
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data_files = write_corpus(Path(tmp), args.docs, args.shards)
        for workers in args.workers:
            rate = stream_tokens_per_s(data_files, workers, args.seq_len, args.batch_size, args.batches)
            rows.append((f"stream, {workers} workers, {args.batch_size} x {args.seq_len}", rate))

    print(
        f"\n| what | tokens/s | ratio to training |\n|---|---:|---:|\n| {train_label} | {train:,.0f} | 1.0 |"
    )
    for label, rate in rows:
        print(f"| {label} | {rate:,.0f} | {rate / train:,.1f} |")


if __name__ == "__main__":
    main()
