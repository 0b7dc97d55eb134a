"""What `src.generate` and `src.app` share: load a model and its tokenizer once, then stream text.

Both verbs read the same model keys (`ModelSource`) and sampling knobs (`Sampling`) and
decode through the same `Completion`, so one prompt gives the same text in the terminal
and in the browser.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from src.data.tokenizer import load_tokenizer
from src.errors import UserError
from src.kernels import KERNELS, applied_kernels, apply_cpu_kernels
from src.kernels.probes import Workload
from src.kernels.selection import choose_kernels, kept, summary
from src.models import SmolLM2, generate_tokens
from src.models.generation import check_generation_fits
from src.models.hf import load_hf_model, read_generation_eos_ids, read_hf_config
from src.training import checkpoint as ckpt

log = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")  # a fast, sentencepiece or BPE one

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# Below this, logits / temperature can overflow to inf and the probabilities to NaN; 0.01 is
# already all but greedy, and temperature=0 is greedy exactly.
MIN_TEMPERATURE = 0.01
SEED_LIMIT = 2**64  # torch.Generator.manual_seed takes 0 <= seed < 2**64


@dataclass
class ModelSource:
    """Where the weights come from (exactly one of the two paths) and where they run."""

    hf_path: str | None = None
    ckpt_path: str | None = None
    tokenizer: str | None = None  # default: the checkpoint's tokenizer, or the HF folder's own
    device: str = "auto"  # auto (CUDA when visible), cpu, cuda, cuda:N
    dtype: str = "float32"  # float32 or bfloat16


@dataclass
class Sampling:
    """Decoding knobs; temperature 0 is greedy, top_k/top_p null switch the filter off."""

    max_new_tokens: int = 100
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    seed: int | None = 1337

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UserError(f"max_new_tokens={self.max_new_tokens}: generate at least 1 token")
        if not (self.temperature == 0 or MIN_TEMPERATURE <= self.temperature < math.inf):
            raise UserError(
                f"temperature={self.temperature}: use 0 for greedy or a finite value >= {MIN_TEMPERATURE}"
            )
        if self.top_k is not None and self.top_k < 1:
            raise UserError(f"top_k={self.top_k}: use a positive integer, or null for no top-k filter")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p={self.top_p}: use a value in (0, 1], or null for no nucleus filter")
        check_seed(self.seed)


def check_seed(seed: int | None, name: str = "seed") -> None:
    """A seed torch can take; `name` says which (generate's last sample uses seed + num_samples - 1)."""
    if seed is not None and not 0 <= seed < SEED_LIMIT:
        raise UserError(f"{name}={seed}: use an integer in [0, 2**64), or null for a random seed")


def resolve_device(name: str, setting: str = "device=") -> torch.device:
    """`auto` picks CUDA when visible; asking for a device this machine lacks is an error, not a
    fallback. `setting` is how the command line names it (`device=`, `--device `), for the error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"{setting}{name}: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{setting}{name}: no CUDA device is visible; use {setting}cpu or {setting}auto")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"{setting}{name}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return device


def resolve_dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise UserError(f"dtype={name}: use one of {', '.join(DTYPES)}")
    return DTYPES[name]


def ready_for_inference(model: SmolLM2, device: torch.device | str, dtype: torch.dtype) -> SmolLM2:
    """`model` on `device` in `dtype`, in eval mode; on CPU with the CPU kernels that decode
    faster on this machine (measured once, then cached: src/kernels/selection.py). The
    choice and its reasons are logged; `TextGenerator.description` names what was kept."""
    model = model.to(device=device, dtype=dtype).eval()
    if torch.device(device).type == "cpu":
        workload = Workload(model.config, batch_size=1, seq_len=1, dtype=dtype, training=False)
        decisions = choose_kernels(KERNELS, workload)
        log.info(summary(decisions, workload))
        apply_cpu_kernels(model, kept(decisions))
    return model


def read_pretrained(path: str | Path) -> SmolLM2:
    """Our model, plain PyTorch in float32 on the CPU, from a Hugging Face SmolLM2/Llama folder or
    one of our checkpoints (a `.ckpt` file, or a sharded `.ckpt` folder of trainer=fsdp)."""
    path = Path(path)
    if path.is_file() or ckpt.is_sharded(path):
        model, _ = ckpt.model_from_checkpoint(ckpt.read_checkpoint(path))
    elif path.is_dir():
        model = load_hf_model(path)
    else:
        raise UserError(f"{path}: no such file or folder (give a Hugging Face model folder or a .ckpt)")
    return model


def load_pretrained(
    path: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> SmolLM2:
    """`read_pretrained`, ready for inference (`ready_for_inference`)."""
    return ready_for_inference(read_pretrained(path), device, dtype)


def read_source(source: ModelSource) -> tuple[SmolLM2, PreTrainedTokenizerBase, Path]:
    """The plain model (as `read_pretrained` gives it), its tokenizer and its path, from
    `hf_path` or `ckpt_path`; the tokenizer comes along unless `tokenizer` overrides it.
    A folder given as the wrong kind names the key it belongs to; the tokenizer is loaded
    before the weights of an HF folder and must not outgrow the model's vocabulary."""
    if (source.hf_path is None) == (source.ckpt_path is None):
        raise UserError("give exactly one of hf_path=<Hugging Face folder> or ckpt_path=<.ckpt>")
    if source.ckpt_path is not None:
        path = Path(source.ckpt_path)
        if (path / "config.json").is_file():
            raise UserError(
                f"ckpt_path={path} is a Hugging Face folder (it has config.json); pass hf_path={path}"
            )
        checkpoint = ckpt.read_checkpoint(path)
        tokenizer = load_tokenizer(source.tokenizer or checkpoint.get(ckpt.TOKENIZER))
        model = ckpt.model_from_checkpoint(checkpoint)[0]
    else:
        path = Path(source.hf_path)
        if path.is_file():  # read_pretrained would take it, but the tokenizer is looked for beside it
            raise UserError(
                f"hf_path={path} is a file; a Hugging Face model is a folder, a .ckpt is ckpt_path="
            )
        if (last := ckpt.last_checkpoint_in(path)) is not None:
            raise UserError(
                f"hf_path={path} is a training run's folder, not a Hugging Face one; pass ckpt_path={last}"
            )
        if not path.is_dir():
            raise UserError(f"hf_path={path}: no such folder (give a Hugging Face model folder)")
        read_hf_config(path)  # its errors first, then the tokenizer's, and only then the weights are read
        if source.tokenizer is None and not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise UserError(
                f"hf_path={path} has no tokenizer (no tokenizer.json); pass tokenizer=<tokenizer folder>"
            )
        tokenizer = load_tokenizer(source.tokenizer or source.hf_path)
        model = read_pretrained(path)
    if len(tokenizer) > model.config.vocab_size:
        raise UserError(
            f"the tokenizer has {len(tokenizer):,} tokens but the model's vocabulary has "
            f"{model.config.vocab_size:,}; pass the run's tokenizer (tokenizer=...)"
        )
    return model, tokenizer, path


def count_tokens(n: int) -> str:
    """`1 token`, `2 tokens`: the count a user reads after a completion."""
    return f"{n:,} token{'' if n == 1 else 's'}"


class IncrementalDecoder:
    """Turns token ids into printable text one id at a time, leaving out special tokens
    (`<|im_start|>` and the like are control, not text).

    A token can end inside a multi-byte character (emoji, CJK): decoding the ids so far
    then ends in U+FFFD, so that text waits until a later token completes the character.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""
        self.printed = 0

    def push(self, token_id: int) -> str:
        """Add one id; return the text that is now final (possibly empty)."""
        self.ids.append(token_id)
        self.text = self.tokenizer.decode(self.ids, skip_special_tokens=True)
        if self.text.endswith("\ufffd"):
            return ""
        return self.flush()

    def flush(self) -> str:
        """Everything not yet returned, including an incomplete character at the very end."""
        piece, self.printed = self.text[self.printed :], len(self.text)
        return piece


class Completion:
    """One continuation: iterate for text pieces as tokens arrive; read the totals afterwards."""

    def __init__(self, generator: TextGenerator, input_ids: torch.Tensor, sampling: Sampling) -> None:
        self.generator = generator
        self.input_ids = input_ids
        self.sampling = sampling
        self.decoder = IncrementalDecoder(generator.tokenizer)
        self.num_tokens = 0
        self.seconds = 0.0

    @property
    def text(self) -> str:
        """The text so far, without characters still waiting for their last byte."""
        return self.decoder.text[: self.decoder.printed]

    @property
    def tokens_per_second(self) -> float:
        return self.num_tokens / self.seconds if self.seconds > 0 else 0.0

    def __iter__(self) -> Iterator[str]:
        start = time.perf_counter()
        tokens = generate_tokens(  # one row: leaving the loop at a stop id ends the generation
            self.generator.model,
            self.input_ids,
            self.sampling.max_new_tokens,
            temperature=self.sampling.temperature,
            top_k=self.sampling.top_k,
            top_p=self.sampling.top_p,
            seed=self.sampling.seed,
        )
        for token in tokens:
            token_id = int(token[0])  # reading the id waits for the device, so the clock is honest
            self.seconds = time.perf_counter() - start
            if token_id in self.generator.stop_ids:
                break
            self.num_tokens += 1
            piece = self.decoder.push(token_id)
            if piece:
                yield piece
        if rest := self.decoder.flush():
            yield rest


class TextGenerator:
    """A model and its tokenizer, loaded once, on one device and dtype."""

    def __init__(
        self,
        model: SmolLM2,
        tokenizer: PreTrainedTokenizerBase,
        description: str,
        stop_ids: frozenset[int] = frozenset(),
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.description = description
        # The tokenizer's EOS, and an HF folder's generation_config.json ends (an instruct
        # model's end of turn, <|im_end|>, is not its tokenizer's EOS).
        self.stop_ids = stop_ids | {tokenizer.eos_token_id}
        # No prompt longer than this fits the context (no token spans more characters than the
        # longest in the vocabulary), so `encode` refuses it before a costly tokenization.
        self.max_prompt_chars = self.context * max(map(len, tokenizer.get_vocab()))

    @classmethod
    def load(cls, source: ModelSource) -> TextGenerator:
        """From `hf_path` or `ckpt_path`; the tokenizer comes along unless `tokenizer` overrides it."""
        device, dtype = resolve_device(source.device), resolve_dtype(source.dtype)
        model, tokenizer, path = read_source(source)
        model = ready_for_inference(model, device, dtype)
        params = model.num_parameters() / 1e6
        kernels = (
            f", CPU kernels: {', '.join(applied_kernels(model)) or 'none'}" if device.type == "cpu" else ""
        )
        return cls(
            model,
            tokenizer,
            f"{path.name} ({params:.1f}M parameters, {device.type}, {source.dtype}{kernels})",
            read_generation_eos_ids(path) if source.hf_path is not None else frozenset(),
        )

    @property
    def context(self) -> int:
        return self.model.config.max_position_embeddings

    def encode(self, prompt: str, max_new_tokens: int, chat: bool = False) -> torch.Tensor:
        """Prompt -> ids (1, T) on the model's device, rejecting what cannot be generated up front.
        `chat` wraps the prompt as one user turn in the tokenizer's chat template, as an
        instruct model was trained to read it."""
        if len(prompt) > self.max_prompt_chars:
            raise UserError(
                f"the prompt has {len(prompt):,} characters, more than this model's limit of "
                f"{self.max_prompt_chars:,}; shorten it"
            )
        if not prompt.strip():
            raise UserError("the prompt is empty: type some text to continue")
        if chat:
            if not self.tokenizer.chat_template:
                raise UserError(
                    "chat mode needs a chat template, and this tokenizer has none; pass tokenizer= a "
                    "folder whose tokenizer_config.json has a chat_template, or turn chat off"
                )
            turn = [{"role": "user", "content": prompt}]
            prompt = self.tokenizer.apply_chat_template(turn, add_generation_prompt=True, tokenize=False)
        ids = self.tokenizer.encode(prompt, add_special_tokens=not chat)  # a template adds its own
        check_generation_fits(self.model, len(ids), max_new_tokens)
        return torch.tensor([ids], device=self.model.embed.weight.device)

    def complete(self, input_ids: torch.Tensor, sampling: Sampling) -> Completion:
        return Completion(self, input_ids, sampling)
