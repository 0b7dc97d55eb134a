"""Compile and activation checkpointing, applied from outside the model, change neither the
numbers nor the checkpoint keys.

Inductor builds the tiny model's forward and backward in under 10 s on 2 CPU cores (cold
cache), so this runs in the default suite.
"""

import functools
import json

import pytest
import torch
from torch._dynamo.utils import counters

from src.kernels import KERNELS, apply_cpu_kernels
from src.kernels.loss import lm_cross_entropy
from src.kernels.probes import ACTS_COMPILED
from src.kernels.rms_norm import FusedRMSNorm
from src.models import SmolLM2, SmolLM2Config, generate
from src.training import checkpoint as ckpt
from src.training.lit_module import SmolLM2LitModule
from src.training.lr_schedule import LRSchedule
from src.training.parallelize import apply_activation_checkpointing, apply_compile
from tests.training import fast_overrides, run_training, write_text


def loss_and_grads(model: SmolLM2, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = lm_cross_entropy(model.hidden_states(x[:, :-1]), model.lm_head.weight, x[:, 1:], onednn=True)
    loss.backward()
    return loss.detach(), [p.grad for p in model.parameters()]


def twins() -> tuple[SmolLM2, SmolLM2]:
    """Two tiny models with the default kernels and the same weights."""
    first = apply_cpu_kernels(SmolLM2(SmolLM2Config.from_preset("tiny")), KERNELS)
    second = apply_cpu_kernels(SmolLM2(first.config), KERNELS)
    second.load_state_dict(first.state_dict())
    return first, second


def test_compiled_model_with_checkpointing_gives_the_same_loss_gradients_and_keys():
    """Both at once, on the default kernels, as `compile=true activation_checkpointing=true` trains."""
    eager, compiled = twins()
    apply_activation_checkpointing(compiled)
    apply_compile(compiled)
    assert list(compiled.state_dict()) == list(eager.state_dict())
    x = torch.randint(0, eager.config.vocab_size, (2, 33))
    expected_loss, expected_grads = loss_and_grads(eager, x)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()  # other tests in this process may have compiled too
    loss, grads = loss_and_grads(compiled, x)  # through `hidden_states`, the training path
    # Dynamo really compiled something: one graph shared by every block.
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    torch.testing.assert_close(loss, expected_loss, atol=1e-5, rtol=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_activation_checkpointing_recomputes_in_backward_and_gives_the_same_gradients():
    plain, checkpointed = twins()
    apply_activation_checkpointing(checkpointed)
    x = torch.randint(0, plain.config.vocab_size, (2, 17))
    expected_loss, expected_grads = loss_and_grads(plain, x)
    loss, grads = loss_and_grads(checkpointed, x)
    assert torch.equal(loss, expected_loss)
    assert all(torch.equal(got, want) for got, want in zip(grads, expected_grads, strict=True))
    # Fewer tensors saved for backward: the blocks keep only their inputs.
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        checkpointed.hidden_states(x)
    with_checkpoints = len(saved)
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        plain.hidden_states(x)
    assert with_checkpoints < len(saved)


def test_checkpointed_model_decodes_with_its_kv_cache_as_the_plain_model_does():
    plain, checkpointed = twins()
    apply_activation_checkpointing(checkpointed)
    prompt = torch.randint(0, plain.config.vocab_size, (1, 5))
    assert torch.equal(generate(checkpointed.eval(), prompt, 6), generate(plain.eval(), prompt, 6))


def test_a_checkpoint_of_a_module_with_checkpointing_and_kernels_loads_into_a_plain_model():
    config = SmolLM2Config.from_preset("tiny")
    module = SmolLM2LitModule(
        config,
        optimizer=functools.partial(torch.optim.AdamW, lr=1e-3),
        schedule=LRSchedule(kind="wsd", warmup_steps=1, total_steps=2),
        tokens_per_step=64,
        activation_checkpointing=True,
        kernels=KERNELS,
    )
    assert isinstance(module.model.norm, FusedRMSNorm)
    plain = SmolLM2(config)
    state = ckpt.model_state_dict({"state_dict": module.state_dict()})
    assert list(state) == list(plain.state_dict())
    plain.load_state_dict(state)
    for (name, got), want in zip(plain.state_dict().items(), module.model.state_dict().values(), strict=True):
        assert torch.equal(got, want), name


@pytest.mark.parametrize("kernels", [(), KERNELS], ids=["pytorch", "cpu-kernels"])
def test_a_training_block_compiles_into_one_graph(kernels):
    """`fullgraph=True` raises at the first graph break; plain PyTorch is what CUDA traces.

    Graph breaks are found by Dynamo, and autograd.Functions traced by AOT autograd, before
    any backend compiles: `aot_eager` finds both in seconds."""
    model = apply_cpu_kernels(SmolLM2(SmolLM2Config.from_preset("tiny")), kernels)
    block = torch.compile(model.blocks[0], fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, model.config.hidden_size, requires_grad=True)  # (B, T, C)
    block(x, *model.rope(0, 16)).sum().backward()
    assert x.grad is not None and model.blocks[0].attn.q_proj.weight.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_under_compile_only_the_kernels_said_to_act_change_the_computation(dtype):
    """`ACTS_COMPILED` is what a compiled run's kernel choice trusts (src/kernels/probes.py): a
    kernel outside it steps aside inside a graph (the block computes bit for bit as without it),
    one inside it computes its own way."""
    torch.manual_seed(0)
    config = SmolLM2Config.from_preset("tiny")
    state = SmolLM2(config).state_dict()
    x = torch.randn(2, 16, config.hidden_size)

    def compiled_block_output(kernels: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        model = SmolLM2(config)
        model.load_state_dict(state)
        model = apply_cpu_kernels(model, kernels)
        torch._dynamo.reset()  # each kernel's block compiled afresh, not as a recompile of the last
        block = torch.compile(model.blocks[0], fullgraph=True, backend="aot_eager")
        inputs = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            y = block(inputs, *model.rope(0, 16))
        y.float().square().sum().backward()
        return y.detach(), inputs.grad

    plain = compiled_block_output(())
    for kernel in KERNELS:
        ours = compiled_block_output((kernel,))
        same = all(torch.equal(a, b) for a, b in zip(ours, plain, strict=True))
        assert same == (kernel not in ACTS_COMPILED), kernel


@pytest.mark.slow
def test_text_samples_during_compiled_training_compile_nothing(tmp_path):
    """Sampling decodes with a KV cache in eval mode, which a compiled block would compile again
    for (graph breaks included). It runs eagerly, so a run compiles what it trains and
    validates: the blocks and the loss, with and without gradients. The step-0 validation
    (`trainer.validate`) runs in the mode of those inside training, so it compiles nothing more."""
    text = write_text(tmp_path / "input.txt")
    overrides = ["compile=true", "kernels=[]", "trainer.max_steps=2", "val_at_start=true", "eval_every=2"]
    torch._dynamo.reset()
    counters.clear()
    run_training(fast_overrides(tmp_path, text, *overrides, "callbacks.text_samples.every_n_steps=1"))
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [row["step"] for row in samples] == [0, 0, 1, 1, 2, 2]  # two prompts each time
    assert counters["stats"]["unique_graphs"] == 4
    assert not counters["graph_break"]
