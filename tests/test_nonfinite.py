"""A NaN loss skips its step's update exactly, on the device; `stop` then ends the run at the
next log step with clean weights, `skip` (nonfinite=skip) carries on and counts the step."""

from __future__ import annotations

import json

import pytest
import torch

from src.errors import UserError
from src.training.checkpoint import read_checkpoint
from src.training.lit_module import SmolLM2LitModule
from src.training.nonfinite import NonfiniteGuard, TrainingDiverged
from tests.training import fast_overrides, logged, run_training, write_text


@pytest.fixture
def poison(monkeypatch):
    """Makes the training loss NaN at the given global steps (0-based, before the update)."""
    steps: set[int] = set()
    loss = SmolLM2LitModule.loss

    def poisoned(self, batch, counted=None):
        value = loss(self, batch, counted)
        return value * float("nan") if self.training and self.trainer.global_step in steps else value

    monkeypatch.setattr(SmolLM2LitModule, "loss", poisoned)
    return steps


def finite(checkpoint: dict) -> bool:
    return all(torch.isfinite(v).all() for v in checkpoint["state_dict"].values())


def test_a_non_finite_norm_makes_fused_adamw_skip_the_step_exactly():
    weight = torch.nn.Parameter(torch.randn(4, 4))
    optimizer = torch.optim.AdamW([weight], lr=0.1, fused=True)
    guard = NonfiniteGuard("skip")
    for step, grad in enumerate([torch.randn(4, 4), torch.full((4, 4), float("nan")), torch.randn(4, 4)]):
        before = [weight.detach().clone()] + [v.clone() for v in optimizer.state[weight].values()]
        weight.grad = grad
        guard.check(torch.linalg.vector_norm(grad), optimizer, step)
        optimizer.step()
        after = [weight.detach()] + list(optimizer.state[weight].values())  # step, exp_avg, exp_avg_sq
        unchanged = len(before) == len(after) and all(map(torch.equal, before, after))
        assert unchanged == (step == 1)
    assert optimizer.state[weight]["step"].item() == 2 and guard.total() == 1


def test_the_skip_is_exact_on_sharded_parameters_too(tmp_path):
    """trainer=fsdp: fused AdamW over DTensor shards honours `found_inf` (a 1-process gloo mesh)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        fully_shard(model, mesh=init_device_mesh("cpu", (1,)))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1, fused=True)
        guard = NonfiniteGuard("skip")
        for step, scale in enumerate([1.0, float("nan"), 1.0]):
            before = [p.full_tensor().clone() for p in model.parameters()]
            model(torch.randn(2, 4)).sum().mul(scale).backward()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0).full_tensor()
            guard.check(norm, optimizer, step)
            optimizer.step()
            optimizer.zero_grad()
            after = [p.full_tensor() for p in model.parameters()]
            assert all(map(torch.equal, before, after)) == (step == 1)
            assert all(torch.isfinite(p).all() for p in after)
        assert guard.total() == 1
    finally:
        dist.destroy_process_group()


def test_stop_names_the_step_at_the_next_log_step_and_saves_clean_weights(tmp_path, poison):
    poison.add(5)  # step 6; the log steps are 4 and 8
    overrides = fast_overrides(
        tmp_path, write_text(tmp_path / "input.txt"), "trainer.max_steps=12", "trainer.log_every_n_steps=4"
    )
    message = r"non-finite gradients at step 6, update skipped; last.ckpt holds step 8,"
    with pytest.raises(TrainingDiverged, match=message):
        run_training(overrides)
    last = read_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 8 and last["nonfinite_skipped"] == 1 and finite(last)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())  # where the run got, as last.ckpt
    assert summary["tokens_seen"] == last["tokens_seen"] == 8 * 4 * 32 and "train/loss_last" in summary


def test_skip_drops_the_update_and_counts_it(tmp_path, poison):
    poison.update({2, 5})
    overrides = fast_overrides(tmp_path, write_text(tmp_path / "input.txt"), "trainer.max_steps=7")
    run_training(overrides + ["nonfinite=skip"])
    run = tmp_path / "run"
    skipped = logged(run, "nonfinite_skipped")
    assert (
        skipped[2] == 0 and skipped[3] == 1 and skipped[7] == 2
    )  # each step's row counts it and those before
    last = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 7 and last["nonfinite_skipped"] == 2 and finite(last)


def test_an_unfused_adamw_is_refused(tmp_path):
    overrides = fast_overrides(tmp_path, write_text(tmp_path / "input.txt"), "optim.fused=false")
    with pytest.raises(UserError, match=r"optim.fused=false: AdamW must be fused"):
        run_training(overrides)
