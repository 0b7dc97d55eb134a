"""The GPU check: one prepared run of everything a GPU changes, written up as one markdown report.

    python -m benchmarks.gpu_check --out report.md            # on a CUDA machine, under 8 minutes
    python -m benchmarks.gpu_check --dry-run --out report.md  # the same steps on the CPU, tiny

GPU time is scarce and a lease is short, so the script is known to work before it meets a
GPU: `--dry-run` runs every step end to end with the tiny model and small shapes on the
CPU (CI runs it, tests/test_gpu_check.py), and the GPU-only verdicts say "skipped: no
CUDA". Each step runs its commands as child processes with a time limit, so a crash, a
CUDA error or a hang is recorded as that step's status and the next step still runs; the
report is rewritten after every step, so even a killed run leaves what it measured.
benchmarks/README.md ("GPU check") gives the device command and what it carries.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from benchmarks import gpu_steps
from benchmarks.gpu_steps import Context, StepFailed
from src.kernels.timing_cache import cpu_name

REPO_ROOT = Path(__file__).resolve().parents[1]
SHAKESPEARE = ("data/input.txt", "../shared/data/tinyshakespeare/input.txt")  # carried, then CI's


@dataclass
class Step:
    title: str
    run: Callable[[Context], str]  # the section's markdown
    gpu_cap_s: int  # time limit of the step on the GPU; the dry run's is DRY_CAP_S
    status: str = "not run"
    seconds: float = 0.0
    body: str = ""


DRY_CAP_S = 240  # a CPU shared with other jobs; the dry run's steps take 10-60 s
STEPS = [  # the GPU caps add up to more than the budget: a step that ends early leaves time to the next
    Step("GPU-marked tests", gpu_steps.gpu_tests, 120),
    Step("Host-sync census of the training step", gpu_steps.sync_census, 75),
    Step("Training step against transformers", gpu_steps.train_step, 150),
    Step("Attention kernel (SDPA backend)", gpu_steps.sdpa_backend, 45),
    Step("100 steps of src.train, then 10 more", gpu_steps.train_run, 150),
    Step("Generation against transformers generate", gpu_steps.generation, 90),
    Step("trainer=fsdp on one device", gpu_steps.fsdp_run, 90),
    Step("LM loss: chunked against one fused pass", gpu_steps.loss_kernels, 60),
]


@dataclass
class Checker:
    """Runs child processes from the repository root with the current step's deadline."""

    work: Path
    deadline: float = 0.0
    commands: list[str] = field(default_factory=list)
    outputs: tuple[Path, ...] = ()  # the last command's stdout and stderr files

    def python(self, name: str, *args: str) -> str:
        """`python args...`; its stdout, or StepFailed with the end of its output (and all its stdout)."""
        self.commands.append(shlex.join(["python", *args]))
        timeout = self.deadline - time.monotonic()
        if timeout < 5:
            raise StepFailed("timed out: no time left in the step's limit")
        out, err = self.work / f"{name}.out", self.work / f"{name}.err"
        self.outputs = out, err
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "1"}
        with open(out, "w") as stdout, open(err, "w") as stderr:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                stdout=stdout,
                stderr=stderr,
                env=env,
                start_new_session=True,  # its own process group: a timeout ends its children too
            )
            try:
                code = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                status = f"timed out after {timeout:.0f} s"
                raise StepFailed(status, tail(out, err), out.read_text(errors="replace")) from None
        if code:
            status = f"failed: its command {len(self.commands)} exited {code}"
            raise StepFailed(status, tail(out, err), out.read_text(errors="replace"))
        return out.read_text()


def tail(*files: Path, lines: int = 25) -> str:
    return "\n".join("\n".join(f.read_text(errors="replace").splitlines()[-lines:]) for f in files)


def git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True)
        dirty = subprocess.run(  # results are not code: an earlier run's report does not count
            ["git", "status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown (no git)"
    if head.returncode:
        return "unknown (not a git checkout: pass --commit)"
    return head.stdout.strip() + (" with uncommitted changes" if dirty.stdout.strip() else "")


def driver_version() -> str:
    try:
        smi = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
        return subprocess.run(smi, capture_output=True, text=True, timeout=30).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no nvidia-smi)"


def machine_rows(commit: str) -> list[tuple[str, str]]:
    """The exact hardware and software the numbers came from."""
    import lightning
    import transformers

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        memory = f"{props.total_memory / 2**30:.1f} GiB"
        device = f"{props.name}, {memory}, compute capability {props.major}.{props.minor}"
        cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
        cuda = f"CUDA {torch.version.cuda}, cuDNN {cudnn}, driver {driver_version()}"
    else:
        device, cuda = f"CPU only: {cpu_name()}, {os.cpu_count()} cores", "none"
    return [
        ("device", device),
        ("CUDA", cuda),
        ("host", f"{cpu_name()}, {os.cpu_count()} cores"),
        ("torch", torch.__version__),
        ("Python", f"{platform.python_version()} ({sys.executable})"),
        ("lightning / transformers", f"{lightning.__version__} / {transformers.__version__}"),
        ("commit", commit),
    ]


def render(title: str, header: list[tuple[str, str]], steps: list[Step], elapsed: float) -> str:
    lines = [f"# {title}", "", "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in header), ""]
    lines += ["| # | step | status | s |", "|---|---|---|---|"]
    lines += [f"| {i} | {s.title} | {s.status} | {s.seconds:.0f} |" for i, s in enumerate(steps, 1)]
    lines += ["", f"Total: {elapsed:.0f} s.", ""]
    for i, step in enumerate(steps, 1):
        if step.body:
            lines += [f"## {i}. {step.title}", "", step.body.strip(), ""]
    return "\n".join(lines)


def find_text(given: str | None, work: Path) -> tuple[Path, str]:
    """Tiny Shakespeare where it was carried or where CI has it; a generated text otherwise (said so)."""
    if given:
        return Path(given).resolve(), "given"
    for candidate in SHAKESPEARE:
        path = (REPO_ROOT / candidate).resolve()
        if path.is_file():
            return path, "tiny Shakespeare"
    from tests.training import write_text

    return write_text(work / "input.txt", words=60000), "NOT tiny Shakespeare: a generated text (none found)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny model and shapes")
    parser.add_argument(
        "--out", default=None, help="report path (default benchmarks/results/<date>_<device>.md)"
    )
    parser.add_argument(
        "--text", default=None, help="training text (default: tiny Shakespeare, see SHAKESPEARE)"
    )
    parser.add_argument("--work", default=None, help="folder for runs and logs (default: a temporary one)")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="all steps together (GPU 470, dry run 900)"
    )
    parser.add_argument("--commit", default=None, help="the commit, where the tree is not a git checkout")
    parser.add_argument("--steps", default=None, help="comma-separated step numbers to run (default: all)")
    args = parser.parse_args()
    chosen = set(range(1, len(STEPS) + 1))
    if args.steps:
        try:
            chosen = {int(n) for n in args.steps.split(",")}
        except ValueError:
            chosen = set()
        if not chosen or not chosen <= set(range(1, len(STEPS) + 1)):
            parser.error(f"--steps {args.steps}: give step numbers from 1 to {len(STEPS)}, comma-separated")
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "error: no CUDA device here; run with --dry-run to check the script on the CPU", file=sys.stderr
        )
        sys.exit(2)

    started = time.monotonic()
    budget = args.budget_s or (900 if args.dry_run else 470)
    work = Path(args.work or tempfile.mkdtemp(prefix="gpu_check_")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    text, text_kind = find_text(args.text, work)
    plan = gpu_steps.DRY_RUN if args.dry_run else gpu_steps.GPU
    checker = Checker(work)
    ctx = Context(plan=plan, work=work, text=text, cuda=not args.dry_run, python=checker.python)
    device = "cpu-dry-run" if args.dry_run else torch.cuda.get_device_name(0).replace(" ", "-")
    out = Path(args.out or REPO_ROOT / "benchmarks" / "results" / f"{datetime.date.today()}_{device}.md")
    out.parent.mkdir(parents=True, exist_ok=True)
    mode = "dry run on the CPU (tiny model, small shapes)" if args.dry_run else f"GPU run ({plan.preset})"
    header = [
        *machine_rows(args.commit or git_commit()),
        ("mode", mode),
        ("training text", f"{text_kind}: {text}"),
        ("started", f"{datetime.datetime.now():%Y-%m-%d %H:%M:%S}, budget {budget:.0f} s"),
    ]
    title = f"GPU check: {header[0][1].split(',')[0]}"
    steps = [dataclasses.replace(step) for step in STEPS]
    for number, step in enumerate(steps, 1):
        left = budget - (time.monotonic() - started)
        if number not in chosen:
            step.status = "not selected (--steps)"
        elif left < 10:
            step.status = "skipped: out of the time budget"
        else:
            cap = DRY_CAP_S if args.dry_run else step.gpu_cap_s
            run_step(step, ctx, checker, deadline=time.monotonic() + min(cap, left))
            print(f"step {number} ({step.title}): {step.status}, {step.seconds:.0f} s", flush=True)
        out.write_text(render(title, header, steps, time.monotonic() - started))
    print(f"report: {out}")
    if any(step.status not in ("ok", "not selected (--steps)") for step in steps):
        sys.exit(1)


def run_step(step: Step, ctx: Context, checker: Checker, deadline: float) -> None:
    """Run one step to its status, seconds and body (its commands first), whatever happens in it."""
    start = time.monotonic()
    checker.deadline, checker.commands, checker.outputs = deadline, [], ()
    try:
        step.body, step.status = step.run(ctx), "ok"
    except StepFailed as failed:
        step.status, step.body = failed.status, failed.output and f"```\n{failed.output}\n```"
    except Exception as err:  # a bug in reading a step's results must not lose the other steps ...
        step.status = f"error: {type(err).__name__}: {err}".replace("\n", " ")
        output = tail(*(f for f in checker.outputs if f.is_file()))  # ... nor what its command printed
        step.body = output and f"```\n{output}\n```"
    step.seconds = time.monotonic() - start
    if checker.commands:
        step.body = "```\n" + "\n".join(checker.commands) + "\n```\n\n" + step.body


if __name__ == "__main__":
    main()
