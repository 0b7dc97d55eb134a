"""Stream text from a Hugging Face folder or a training checkpoint to the terminal.

python -m src.generate ckpt_path=<.ckpt> prompt="Once upon a time" max_new_tokens=50 temperature=0
python -m src.generate hf_path=<dir> prompt_file=prompts.txt num_samples=3 device=cuda dtype=bfloat16
python -m src.generate hf_path=<instruct dir> chat=true prompt="What is gravity?"

Stdout carries only generated text: each completion ends with a newline, and several
completions (a prompt file, num_samples > 1) are separated by a line `---`. A prompt
file holds one prompt per line; blank lines are skipped. Sample i uses seed + i, so the
first sample of any run equals a one-sample run with the same seed. Tokens/s and other
diagnostics go to stderr. Each completion is also appended to `out_file` as a JSON line
{prompt, completion, settings}; by default outputs/generate/<date>_<time>.jsonl (src/outputs.py).
`chat=true` sends each prompt as one user turn of the tokenizer's chat template (an instruct
model's format). Completions end at the tokenizer's EOS or an end id of the HF folder's
generation_config.json, and leave out special tokens.

Exit codes: 0 when done, 2 on bad input (one `error:` line), 130 after Ctrl-C and 141 when
the reader of stdout went away (`| head -c3`), as if killed by SIGPIPE; the last two quietly.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from src.cli import parse_cli
from src.errors import UserError, exit_on_user_error
from src.outputs import default_output_dir
from src.serving.inference import ModelSource, Sampling, TextGenerator, check_seed, count_tokens

SEPARATOR = "---\n"


@dataclass
class GenerateConfig(Sampling, ModelSource):
    prompt: str = ""
    chat: bool = False  # wrap each prompt in the tokenizer's chat template, as one user turn
    prompt_file: str | None = None
    num_samples: int = 1
    out_file: str = ""  # empty: outputs/generate/<date>_<time>.jsonl

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_samples < 1:
            raise UserError(f"num_samples={self.num_samples}: ask for at least 1 sample")
        if self.seed is not None and self.num_samples > 1:
            check_seed(self.seed + self.num_samples - 1, "seed + num_samples - 1")


def read_prompts(cfg: GenerateConfig) -> list[str]:
    """The one `prompt=` or the lines of `prompt_file=`; checked before the model is loaded."""
    if cfg.prompt and cfg.prompt_file:
        raise UserError("give prompt=... or prompt_file=..., not both")
    if cfg.prompt_file is None:
        if not cfg.prompt.strip():
            raise UserError('the prompt is empty: pass prompt="..." or prompt_file=<file, one prompt a line>')
        return [cfg.prompt]
    path = Path(cfg.prompt_file)
    if not path.is_file():
        raise UserError(f"{path}: prompt file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path}: not UTF-8 (byte {err.start}); convert it with iconv -t utf-8") from None
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"{path}: no prompts (write one prompt per line)")
    return prompts


def settings(cfg: GenerateConfig) -> dict[str, object]:
    """What made a completion: the model source, chat mode and the sampling knobs (this sample's seed)."""
    names = [f.name for f in (*dataclasses.fields(ModelSource), *dataclasses.fields(Sampling))]
    return {name: getattr(cfg, name) for name in [*names, "chat"]}


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    cfg = parse_cli(GenerateConfig, argv)
    prompts = read_prompts(cfg)
    out_file = Path(
        cfg.out_file or default_output_dir("generate") / f"{datetime.now():%Y-%m-%d_%H-%M-%S}.jsonl"
    )
    try:  # before the model loads: a path that cannot be written is a one-line error
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.open("a").close()
    except OSError as err:
        raise UserError(
            f"cannot write out_file={out_file} ({err.strerror}); pass a writable out_file"
        ) from None
    generator = TextGenerator.load(cfg)
    # Encode every prompt first so a bad one fails before any text is printed.
    encoded = [generator.encode(prompt, cfg.max_new_tokens, cfg.chat) for prompt in prompts]
    print(f"loaded {generator.description}", file=sys.stderr)
    num_tokens, seconds = 0, 0.0
    for index, input_ids in enumerate(encoded):
        for sample in range(cfg.num_samples):
            if index or sample:
                sys.stdout.write(SEPARATOR)
            sample_cfg = dataclasses.replace(cfg, seed=None if cfg.seed is None else cfg.seed + sample)
            completion = generator.complete(input_ids, sample_cfg)
            pieces = []
            for piece in completion:
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            sys.stdout.flush()
            row = {"prompt": prompts[index], "completion": "".join(pieces), "settings": settings(sample_cfg)}
            with out_file.open("a", encoding="utf-8") as f:  # appended as made: Ctrl-C keeps the rest
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            num_tokens, seconds = num_tokens + completion.num_tokens, seconds + completion.seconds
    rate = num_tokens / seconds if seconds > 0 else 0.0
    print(
        f"{count_tokens(num_tokens)} in {seconds:.2f} s: {rate:.1f} tokens/s; wrote {out_file}",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
