"""Text samples from fixed prompts every N steps, so a run shows what it has learned."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch.distributed.fsdp import FSDPModule

from src.callbacks.every_n_steps import EveryNSteps
from src.data.tokenizer import load_tokenizer
from src.models.generation import generate_tokens


class TextSamples(EveryNSteps):
    """Greedy-or-sampled continuations in eval mode, with a fixed seed and the KV cache.

    Each sample is appended to `<run>/samples.jsonl` as {step, prompt, completion} and
    handed to every logger that has a `log_text_samples` method. The tokenizer is the
    module's own (`tokenizer_name`, the one its checkpoints record).

    Rank 0 samples alone, except from a sharded model (trainer=fsdp): each forward gathers
    weights from every rank, so every rank runs the same generation with the same seed,
    and only rank 0 writes and logs.

    Sampling runs eagerly even when the blocks are compiled (compile=true): decoding with a
    cache in eval mode would otherwise compile each block again for every new case, and a
    compiled decoding step would cost more to build than a few samples take.
    """

    def __init__(
        self,
        prompts: list[str],
        every_n_steps: int = 500,
        max_new_tokens: int = 64,
        temperature: float = 0.8,
        top_k: int | None = 50,
        top_p: float | None = None,
        seed: int = 1234,
        out_file: str = "samples.jsonl",
    ) -> None:
        super().__init__(every_n_steps)
        self.prompts = list(prompts)
        self.max_new_tokens, self.temperature, self.top_k, self.top_p, self.seed = (
            max_new_tokens,
            temperature,
            top_k,
            top_p,
            seed,
        )
        self.out_file = Path(out_file)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step, model = trainer.global_step, pl_module.model
        sharded = isinstance(model, FSDPModule)
        if not self.prompts or not (sharded or trainer.is_global_zero):
            return
        tokenizer = load_tokenizer(pl_module.tokenizer_name)
        was_training = model.training
        model.eval()
        if sharded:
            # Gather every module's weights here, outside generate's inference mode, where FSDP2
            # cannot make a module's first gather (its reusable buffers would be inference tensors).
            # The root (embedding = head) then also stays whole, in the dtype the KV cache takes.
            for module in model.modules():
                if isinstance(module, FSDPModule):
                    module.unshard()
        try:
            with torch.compiler.set_stance("force_eager"):
                completions = [self._complete(model, tokenizer, p, pl_module.device) for p in self.prompts]
        finally:
            model.train(was_training)
        if not trainer.is_global_zero:
            return
        pairs = zip(self.prompts, completions, strict=True)
        rows = [{"step": step, "prompt": prompt, "completion": completion} for prompt, completion in pairs]
        self.out_file.parent.mkdir(parents=True, exist_ok=True)
        with self.out_file.open("a") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
        for row in rows:
            rank_zero_info(f"[step {step}] {row['prompt']}{row['completion']}")
        for logger in trainer.loggers:
            if hasattr(logger, "log_text_samples"):
                logger.log_text_samples(rows, pl_module.steps_made)  # the row of this step's metrics

    def _complete(self, model: torch.nn.Module, tokenizer, prompt: str, device: torch.device) -> str:
        """The sampled continuation of one prompt; its tokens are read off the device once, at the end."""
        ids = torch.tensor([tokenizer.encode(prompt)], device=device)
        new = list(
            generate_tokens(
                model,
                ids,
                self.max_new_tokens,
                temperature=self.temperature,
                top_k=self.top_k,
                top_p=self.top_p,
                eos_id=tokenizer.eos_token_id,
                seed=self.seed,
                compile_steps=False,
            )
        )
        return tokenizer.decode(torch.cat(new).tolist() if new else [], skip_special_tokens=True)
