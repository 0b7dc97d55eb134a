"""Per-layer health: every layer's gradient norm, weight norm and update ratio reach the CSV at
log steps, and the layers' gradient norms add up to the global one."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from src.callbacks.layer_health import QUANTITIES, LayerHealth, layer_of
from src.errors import UserError
from src.models import SmolLM2, SmolLM2Config
from tests.training import fast_overrides, logged, read_metrics, run_training, write_text


def test_parameters_are_grouped_by_layer():
    names = ["embed.weight", "blocks.0.attn.q_proj.weight", "blocks.11.mlp_norm.weight", "norm.weight"]
    names.append("lm_head.weight")
    assert [layer_of(n) for n in names] == ["embed", "blocks.0", "blocks.11", "final_norm", "lm_head"]


def test_an_interval_that_is_never_logged_is_a_user_error():
    with pytest.raises(UserError, match="multiple of trainer.log_every_n_steps=4"):
        LayerHealth(every_n_steps=6).setup(SimpleNamespace(log_every_n_steps=4), None, "fit")


WIDE = ["model.hidden_size=576", "model.num_heads=9", "model.num_kv_heads=3", "model.intermediate_size=1536"]


@pytest.mark.parametrize("model", [[], WIDE], ids=["tiny", "2x576"])
def test_every_layer_is_logged_at_log_steps(tmp_path, model):
    overrides = fast_overrides(
        tmp_path,
        write_text(tmp_path / "input.txt"),
        *model,
        "trainer.max_steps=5",  # the last step is logged too, off the interval
        "trainer.log_every_n_steps=2",
        "val_at_start=false",
        "eval_every=100",
        "checkpoint_every=100",
    )
    run_training(overrides)
    run = tmp_path / "run"
    layers = ["embed", "blocks.0", "blocks.1", "final_norm"]  # tied head: counted with embed
    health = {key for key in read_metrics(run)[0] if key.startswith("health/")}
    assert health == {f"health/{q}/{layer}" for q in QUANTITIES for layer in layers}
    for key in health:
        values = logged(run, key)
        assert sorted(values) == [2, 4, 5] and all(math.isfinite(v) and v > 0 for v in values.values()), key
    grad_norm = logged(run, "grad_norm")  # before clipping: the same gradients
    for step in (2, 4, 5):
        total = math.sqrt(sum(logged(run, f"health/grad_norm/{layer}")[step] ** 2 for layer in layers))
        assert total == pytest.approx(grad_norm[step], rel=1e-4)
    ratio = logged(run, "health/update_ratio/blocks.1")
    assert all(1e-6 < r < 1 for r in ratio.values())


def test_norms_and_update_ratio_are_exact_and_gradients_unscaled():
    """Gradients of 4 under a GradScaler factor of 4 are gradients of 1; a step of -1% of the
    weights is an update ratio of 0.01 in every layer."""
    model = SmolLM2(SmolLM2Config.from_preset("tiny"))
    for p in model.parameters():
        p.grad = torch.full_like(p, 4.0)
    logged_values: dict[str, float] = {}
    module = SimpleNamespace(model=model, log_dict=logged_values.update)
    scaler = SimpleNamespace(get_scale=lambda: 4.0)
    trainer = SimpleNamespace(
        global_step=1, log_every_n_steps=2, precision_plugin=SimpleNamespace(scaler=scaler)
    )
    health = LayerHealth()
    health.setup(trainer, module, "fit")
    health.on_fit_start(trainer, module)
    weights = {name: p.detach().clone() for name, p in model.named_parameters()}
    health.on_before_optimizer_step(trainer, module, None)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(0.99)
    trainer.global_step = 2  # the step made
    health.on_train_batch_end(trainer, module)

    blocks = [name for name in weights if name.startswith("blocks.1.")]
    assert logged_values["health/grad_norm/blocks.1"] == pytest.approx(
        math.sqrt(sum(weights[n].numel() for n in blocks)), rel=1e-5
    )
    weight_norm = math.sqrt(sum(float(weights[n].square().sum()) for n in blocks))
    assert logged_values["health/weight_norm/blocks.1"] == pytest.approx(weight_norm, rel=1e-5)
    for layer in ("embed", "blocks.0", "blocks.1", "final_norm"):
        assert logged_values[f"health/update_ratio/{layer}"] == pytest.approx(0.01, rel=1e-3)


def test_histograms_count_every_entry_of_a_layer_by_magnitude():
    model = SmolLM2(SmolLM2Config.from_preset("tiny"))
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.02)  # log10 = -1.7: the bin [-1.75, -1.5)
    calls: list[tuple[dict, int]] = []
    logger = SimpleNamespace(log_histograms=lambda histograms, step: calls.append((histograms, step)))
    module = SimpleNamespace(model=model, log_dict=lambda values: None)
    trainer = SimpleNamespace(global_step=3, log_every_n_steps=2, precision_plugin=None, loggers=[logger])
    health = LayerHealth(histogram_every_n_steps=4)
    health.setup(trainer, module, "fit")
    health.on_fit_start(trainer, module)
    health.on_before_optimizer_step(trainer, module, None)
    trainer.global_step = module.steps_made = 4  # the optimizer step is done
    health.on_train_batch_end(trainer, module)

    ((histograms, step),) = calls
    assert step == 4  # the row of optimizer step 4's metrics
    counts, edges = histograms["health/grad_histogram/blocks.0"]
    numel = sum(p.numel() for name, p in model.named_parameters() if name.startswith("blocks.0."))
    assert len(edges) == len(counts) + 1 and edges[0] == -12.0 and edges[-1] == 2.0
    assert sum(counts) == numel and counts[edges.index(-1.75)] == numel
    weights, _ = histograms["health/weight_histogram/embed"]
    assert sum(weights) == model.embed.weight.numel()


def test_a_histogram_interval_off_the_health_interval_is_a_user_error():
    with pytest.raises(UserError, match="histogram_every_n_steps=5 is not a multiple"):
        LayerHealth(histogram_every_n_steps=5).setup(SimpleNamespace(log_every_n_steps=2), None, "fit")
