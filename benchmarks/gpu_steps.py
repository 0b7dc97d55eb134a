"""The steps of the GPU check (benchmarks/gpu_check.py), each a function of a Context -> markdown.

Every step runs the project's own commands (pytest, src.train, the benchmark scripts) as a
user would, then reads their output, CSV metrics or census file and states each GPU target
of issue 15 as met or not. The two plans hold the sizes: the GPU run's, and the dry run's
tiny ones that make the same steps take seconds on a CPU.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import re
import statistics
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import markdown_table as table
from src.training import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = "skipped: no CUDA"
TEST_TIMEOUT_S = 60  # per GPU-marked test


class StepFailed(Exception):
    """A step's command failed or ran out of time: `status` goes in the table, `output` below it;
    `stdout`: all the command printed, for a step that reads more of it than the end."""

    def __init__(self, status: str, output: str = "", stdout: str = "") -> None:
        super().__init__(status)
        self.status, self.output, self.stdout = status, output, stdout


@dataclass(frozen=True)
class Plan:
    preset: str
    device: str
    shape: str  # BxT of the training-step benchmark
    train_step: tuple[str, ...]  # its timing arguments
    train_steps: tuple[int, int]  # the src.train run's steps, then its continuation's
    run: tuple[str, ...]  # model and shapes of the src.train runs
    small_run: tuple[str, ...]  # the census and fsdp runs: the same model, shorter sequences
    generation: tuple[str, ...]
    loss: tuple[str, ...]  # the loss benchmark's size and timing arguments


GPU = Plan(
    preset="smollm2_135m",
    device="cuda",
    shape="8x2048",
    train_step=("--warmup", "2", "--repeats", "5"),
    train_steps=(100, 10),
    run=("model=smollm2_135m",),  # the seed recipe: 8 x 2048 micro-batches, 65,536 tokens per step
    small_run=(
        "model=smollm2_135m",
        "data.seq_len=512",
        "data.batch_size=8",
        "tokens_per_step=null",
        "callbacks.text_samples.max_new_tokens=16",
    ),
    generation=("--new-tokens", "128", "--repeats", "3"),
    loss=("--warmup", "2", "--repeats", "5"),  # 8 x 2048 tokens, the training step's
)
# fp32 and 32-token windows, as the tests' tiny runs: on a CPU the 49,152-token vocabulary costs the
# most, and sampling text at the start and end of every run would cost more than its steps.
TINY = ("model=tiny", "trainer.accelerator=cpu", "precision=32-true", "data.seq_len=32", "data.batch_size=4")
DRY_RUN = Plan(
    preset="tiny",
    device="cpu",
    shape="2x64",
    # aot_eager traces and differentiates the compiled blocks and loss as inductor does, without
    # inductor's CPU code generation: not the code a GPU runs (tests/test_train.py compiles for CPUs)
    train_step=("--warmup", "1", "--repeats", "1", "--matmul-size", "1024", "--compile-backend", "aot_eager"),
    train_steps=(20, 5),
    run=(*TINY, "callbacks.text_samples.max_new_tokens=4"),
    small_run=(*TINY, "callbacks.text_samples.max_new_tokens=4"),
    generation=("--new-tokens", "8", "--prompt-len", "8", "--repeats", "1"),
    loss=("--tokens", "256", "--warmup", "1", "--repeats", "1", "--compile-backend", "aot_eager"),
)


@dataclass
class Context:
    plan: Plan
    work: Path
    text: Path
    cuda: bool
    python: Callable[..., str]  # (log name, *args) -> stdout; raises StepFailed

    def train(self, name: str, *overrides: str) -> Path:
        """`python -m src.train` with a CSV logger into work/<name>/run; returns that run folder."""
        run = self.work / name / "run"
        paths = (f"paths.root_dir={self.work / name}", f"paths.output_dir={run}")
        data = (f"data.path={self.text}", f"data.cache_dir={self.work / 'cache'}")  # tokenized once
        self.python(name, "-m", "src.train", "logger=csv", *data, *paths, *overrides)
        return run

    def verdict(self, claim: str, met: bool, gpu_only: bool = True) -> str:
        """A target stated as met or not; a GPU target of a CPU run is neither."""
        return f"- {claim}: {NO_CUDA if gpu_only and not self.cuda else 'met' if met else '**NOT met**'}"


def gpu_tests(ctx: Context) -> str:
    tests = (REPO_ROOT / "tests").rglob("test_*.py")  # only these files: the others need not import there
    files = sorted(str(p.relative_to(REPO_ROOT)) for p in tests if "pytest.mark.gpu" in p.read_text())
    # -v names each test as it ends, so a step cut off by its time limit still reports those that ran;
    # a test that hangs (a collective, a compile) fails after TEST_TIMEOUT_S where pytest-timeout is there.
    timeout = (f"--timeout={TEST_TIMEOUT_S}",) if importlib.util.find_spec("pytest_timeout") else ()
    args = ("-m", "pytest", "-m", "gpu", "-v", "-rA", "-p", "no:cacheprovider", *timeout, *files)
    try:
        out = ctx.python("gpu_tests", *args)
    except StepFailed as failed:
        if results := pytest_results(failed.stdout):
            failed.output = results + "\n" + failed.output
        raise
    return "```\n" + pytest_results(out) + "\n```"


def pytest_results(out: str) -> str:
    """pytest's short summary (-rA) where it got that far, else the names -v printed as tests ended."""
    if "short test summary info" in out:
        return "\n".join(out[out.find("short test summary info") :].strip().splitlines()[-60:])
    ended = re.compile(r"::\S+ (PASSED|FAILED|ERROR|SKIPPED)")
    return "\n".join(line for line in out.splitlines() if ended.search(line))


# Checkpoints at log steps (6 a multiple of 3): the loss-spike guard on in the census needs that.
CENSUS_LOG, CENSUS_EVERY, CENSUS_STEPS = 3, 6, 12


def sync_census(ctx: Context) -> str:
    out_file = ctx.work / "census.json"
    ctx.train(
        "census",
        *ctx.plan.small_run,
        *every_n_steps(CENSUS_EVERY),
        f"trainer.max_steps={CENSUS_STEPS}",
        "trainer.accumulate_grad_batches=2",
        f"trainer.log_every_n_steps={CENSUS_LOG}",
        # the loss-spike guard judges every step's loss on the device from step 5 on: counted too
        "spike.mode=warn",
        "spike.window=8",
        "spike.min_steps=4",
        "+callbacks.sync_census._target_=benchmarks.sync_census.SyncCensus",
        f"+callbacks.sync_census.out_file={out_file}",
    )
    steps = {int(k): v for k, v in json.loads(out_file.read_text())["steps"].items()}
    quiet = [step for step in sorted(steps) if census_kind(step) == "quiet"]
    rows = []
    for step, found in sorted(steps.items()):
        where = Counter(short(r) for r in found["host_reads"] + found["cuda_syncs"])
        places = ", ".join(f"`{r}` x{n}" for r, n in where.most_common(6)) + (
            " ..." if len(where) > 6 else ""
        )
        syncs = len(found["cuda_syncs"]) if ctx.cuda else "n/a"
        rows.append([step, census_kind(step), len(found["host_reads"]), syncs, places])
    quiet_reads = sum(len(steps[s]["host_reads"]) for s in quiet)
    quiet_syncs = sum(len(steps[s]["cuda_syncs"]) for s in quiet)
    lines = [
        f"{CENSUS_STEPS} optimizer steps of 2 micro-batches, logging every {CENSUS_LOG}, eval, checkpoint "
        f"and samples every {CENSUS_EVERY}. Host reads: Python-level `.item()`-like calls "
        "(tests/test_host_sync.py); CUDA syncs: what `torch.cuda.set_sync_debug_mode('warn')` reports.",
        "",
        table(["step", "kind", "host reads", "CUDA syncs", "where"], rows),
        "",
        ctx.verdict(
            f"zero host reads in the quiet steps {quiet} ({quiet_reads})", quiet_reads == 0, gpu_only=False
        ),
        ctx.verdict(
            f"zero host syncs per step between log intervals ({quiet_syncs} CUDA syncs)", quiet_syncs == 0
        ),
    ]
    return "\n".join(lines)


def census_kind(step: int) -> str:
    kinds = [
        name
        for name, every in (("log", CENSUS_LOG), ("eval, checkpoint, samples", CENSUS_EVERY))
        if step % every == 0
    ]
    return " + ".join(kinds) or "quiet"


def short(entry: str) -> str:
    """'name (/long/path/site-packages/pkg/file.py:12)' -> 'name (pkg/file.py:12)'."""
    for prefix in (f"{REPO_ROOT}/", "site-packages/", "dist-packages/"):
        if prefix in entry:
            head, _, rest = entry.partition("(")
            return head + "(" + rest.split(prefix)[-1]
    return entry


def train_step(ctx: Context) -> str:
    args = ("--preset", ctx.plan.preset, "--shapes", ctx.plan.shape, "--dtypes", "bf16", "--compile")
    args += (*ctx.plan.train_step, "--device", ctx.plan.device)
    out = ctx.python("train_step", "-m", "benchmarks.train_step", *args)
    rows = {row["model"]: row for row in parse_table(out)}
    datasheet = re.search(r"([\d.]+)% of datasheet", rows["ours compiled"]["MFU"])
    compiled_mfu = float(datasheet.group(1)) if datasheet else 0.0
    eager_ratio = float(rows["ours"]["vs HF"].rstrip("x"))
    memory = {name: int(row["peak MiB"].replace(",", "")) for name, row in rows.items()}
    lines = [
        demote(out),
        "",
        ctx.verdict(f"compiled >= 35% MFU of the datasheet peak ({compiled_mfu:.1f}%)", compiled_mfu >= 35),
        ctx.verdict(f"eager >= 1.2x transformers eager ({eager_ratio:.2f}x)", eager_ratio >= 1.2),
        ctx.verdict(
            f"peak memory <= transformers (ours {memory['ours']:,}, compiled {memory['ours compiled']:,}, "
            f"transformers {memory['transformers']:,} MiB)",
            max(memory["ours"], memory["ours compiled"]) <= memory["transformers"],
        ),
    ]
    return "\n".join(lines)


def sdpa_backend(ctx: Context) -> str:
    args = ("--preset", ctx.plan.preset, "--shape", "2x2048" if ctx.cuda else ctx.plan.shape)
    return demote(
        ctx.python("sdpa_backend", "-m", "benchmarks.sdpa_backend", *args, "--device", ctx.plan.device)
    )


def train_run(ctx: Context) -> str:
    """The user's command on tiny Shakespeare with every default callback, then its continuation."""
    steps, more = ctx.plan.train_steps
    log = () if ctx.cuda else ("trainer.log_every_n_steps=5", "trainer.limit_val_batches=2")
    run = ctx.train("train", *ctx.plan.run, *log, f"trainer.max_steps={steps}")
    first = logged_throughput(run)
    last = run / "checkpoints" / "last.ckpt"
    ctx.train("train", *ctx.plan.run, *log, f"trainer.max_steps={steps + more}", f"ckpt_path={last}")
    logged = logged_throughput(run)
    rows = [  # Lightning's CSV logs step k's metrics at step k - 1; the table says k, as src.report does
        [int(r["step"]) + 1, r["train/loss"][:6], f"{float(r['tokens_per_s']):,.0f}", percent(r.get("mfu"))]
        for r in logged
    ]
    steady = [float(row["tokens_per_s"]) for row in first[1:]] or [0.0]  # the first interval holds warm-up
    mfus = [float(row["mfu"]) for row in first[1:] if row.get("mfu")]
    final_step = ckpt.read_checkpoint(last, weights=False)["global_step"]
    lines = [
        table(["step", "train/loss", "tokens/s", "MFU (datasheet)"], rows),
        "",
        f"- {steps} steps, steady tokens/s (median of the intervals after the first): "
        f"{statistics.median(steady):,.0f}, "
        + (f"MFU {100 * statistics.median(mfus):.1f}%" if mfus else "MFU not logged (no known peak)"),
        f"- continuation: {len(logged) - len(first)} more log rows, last.ckpt at step {final_step}",
    ]
    if final_step != steps + more or len(logged) == len(first):
        raise StepFailed(f"failed: the continuation ended at step {final_step}", "\n".join(lines))
    return "\n".join(lines)


def logged_throughput(run: Path) -> list[dict[str, str]]:
    return [row for row in read_metrics(run) if row.get("tokens_per_s")]


def generation(ctx: Context) -> str:
    args = ("--preset", ctx.plan.preset, "--batches", "1,8", "--dtypes", "bf16", *ctx.plan.generation)
    out = ctx.python("generation", "-m", "benchmarks.generation", *args, "--device", ctx.plan.device)
    rows = parse_table(out)
    ratio = next(float(r["vs HF"].rstrip("x")) for r in rows if r["batch"] == "1" and r["model"] == "ours")
    return (
        demote(out) + "\n\n" + ctx.verdict(f"batch 1 >= 3x transformers generate ({ratio:.2f}x)", ratio >= 3)
    )


def fsdp_run(ctx: Context) -> str:
    fsdp = (
        "trainer=fsdp",
        "trainer.devices=1",
        *ctx.plan.small_run,
        "trainer.log_every_n_steps=2",
        *every_n_steps(2),
    )
    run = ctx.train("fsdp", *fsdp, "trainer.max_steps=4")
    last = run / "checkpoints" / "last.ckpt"
    ctx.train("fsdp", *fsdp, "trainer.max_steps=6", f"ckpt_path={last}")
    losses = [float(row["train/loss"]) for row in read_metrics(run) if row.get("train/loss")]
    step = ckpt.read_checkpoint(last, weights=False)["global_step"]
    lines = [
        f"- train/loss at each log step (every 2): {', '.join(f'{loss:.4f}' for loss in losses)}",
        f"- last.ckpt: {'a sharded folder' if ckpt.is_sharded(last) else 'one file'} at step {step}",
    ]
    if step != 6 or len(losses) != 3:
        raise StepFailed("failed: 4 sharded steps and 2 more did not log 3 losses", "\n".join(lines))
    return "\n".join(lines)


def loss_kernels(ctx: Context) -> str:
    """The chunked loss that `compile=true` trains with, against one fused pass (issue 15: keep
    whichever is faster at equal memory)."""
    args = ("--preset", ctx.plan.preset, "--dtypes", "bf16", "--compile", *ctx.plan.loss)
    out = ctx.python("loss", "-m", "benchmarks.loss", *args, "--device", ctx.plan.device)
    rows = {row["loss"]: row for row in parse_table(out)}
    trained = rows["chunked (ours), compiled"]

    def number(row: dict[str, str], column: str) -> float:
        return float(row[column].replace(",", ""))

    rivals = [r for r in rows.values() if number(r, "peak MiB") <= number(trained, "peak MiB")]
    fastest = max(rivals, key=lambda row: number(row, "tokens/s"))
    claim = (
        f"the chunked loss, compiled, is the fastest at its peak memory ({trained['peak MiB']} MiB) or less "
        f"(fastest there: {fastest['loss']}, {fastest['tokens/s']} tokens/s)"
    )
    return demote(out) + "\n\n" + ctx.verdict(claim, fastest is trained)


def percent(fraction: str | None) -> str:
    return f"{100 * float(fraction):.1f}%" if fraction else "n/a"


def every_n_steps(n: int) -> tuple[str, ...]:
    """Eval, checkpoints and text samples every n steps, on 2 validation batches."""
    return (
        f"eval_every={n}",
        f"checkpoint_every={n}",
        f"callbacks.text_samples.every_n_steps={n}",
        "trainer.limit_val_batches=2",
    )


def read_metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "csv" / "metrics.csv") as f:
        return list(csv.DictReader(f))


def parse_table(text: str) -> list[dict[str, str]]:
    """The rows of the first markdown table in `text`, keyed by its header."""
    lines = [line.strip().strip("|") for line in text.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.split("|")), strict=True)) for line in lines[2:]]


def demote(text: str) -> str:
    """A script's own `## title` becomes a subsection of the step's."""
    return "\n".join("#" + line if line.startswith("## ") else line for line in text.strip().splitlines())
