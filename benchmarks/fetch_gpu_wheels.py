"""Put what the GPU check needs and the GPU machine lacks into git-ignored paths, to be carried there.

    python -m benchmarks.fetch_gpu_wheels        # -> .whl/*.whl and data/input.txt

The GPU machine (benchmarks/README.md, "GPU check") runs Python 3.12 with torch, lightning,
transformers, tokenizers, safetensors, pyarrow and matplotlib installed, and reaches no
network. `src.train` also imports Hydra (hydra-core, omegaconf, antlr4) and W&B (with its
own imports, listed below): their wheels for CPython 3.12 on manylinux x86-64 go to .whl/,
at the versions installed here, the ones the tests pass with. Tiny Shakespeare goes to
data/input.txt, where `src.train` looks by default.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
WHEELS = REPO_ROOT / ".whl"
TEXT = REPO_ROOT / "data" / "input.txt"
SHAKESPEARE = REPO_ROOT.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"

# What a `src.train` run imports that the GPU machine's image does not hold (its package list of
# 2026-11); W&B's own imports from `annotated-types` on.
MISSING = [
    "hydra-core",
    "omegaconf",
    "wandb",
    "annotated-types",
    "googleapis-common-protos",
    "opentelemetry-api",
    "opentelemetry-exporter-http-transport",
    "opentelemetry-exporter-otlp-common",
    "opentelemetry-exporter-otlp-proto-common",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-proto",
    "opentelemetry-sdk",
    "opentelemetry-semantic-conventions",
    "platformdirs",
    "protobuf",  # the image has one, of a version not known here: W&B's generated code needs a recent one
    "pydantic",
    "pydantic-core",
    "typing-inspection",
]
SDIST_ONLY = ["antlr4-python3-runtime"]  # pure Python, on PyPI as source only: built into a wheel here
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]


def pinned(names: list[str]) -> list[str]:
    return [f"{name}=={importlib.metadata.version(name)}" for name in names]


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.parse_args()  # no options: --help describes it, anything else is refused before a download
    shutil.rmtree(WHEELS, ignore_errors=True)  # one version of each: two would stop the install there
    WHEELS.mkdir()
    pip = [sys.executable, "-m", "pip"]
    target = ["--python-version", "3.12", "--implementation", "cp", *(f"--platform={p}" for p in PLATFORMS)]
    download = [*pip, "download", "--no-deps", "--only-binary=:all:", *target, "-d", str(WHEELS)]
    subprocess.run([*download, *pinned(MISSING)], check=True)
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(WHEELS), *pinned(SDIST_ONLY)], check=True)
    TEXT.parent.mkdir(exist_ok=True)
    shutil.copyfile(SHAKESPEARE, TEXT)
    size = sum(f.stat().st_size for f in WHEELS.iterdir()) / 2**20
    print(f"{len(list(WHEELS.iterdir()))} wheels in {WHEELS} ({size:.0f} MiB); {TEXT} from {SHAKESPEARE}")


if __name__ == "__main__":
    main()
