import pytest

from src.errors import UserError
from src.training.lr_schedule import LRSchedule


@pytest.mark.parametrize("kind", ["constant", "cosine", "linear", "wsd"])
def test_warmup_is_linear_from_zero_to_peak(kind):
    schedule = LRSchedule(kind=kind, warmup_steps=10, total_steps=100)
    assert [schedule(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd"])
def test_decay_ends_at_the_floor_and_holds_past_the_horizon(kind):
    schedule = LRSchedule(kind=kind, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    assert schedule(100) == pytest.approx(0.1)
    assert schedule(150) == schedule(10_000) == pytest.approx(0.1)
    values = [schedule(s) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # never rises after warmup


def test_wsd_is_stable_then_decays_over_its_last_fraction():
    schedule = LRSchedule(kind="wsd", warmup_steps=10, total_steps=100, decay_fraction=0.2)
    assert schedule(10) == schedule(80) == 1.0
    assert schedule(90) == pytest.approx(0.55)


def test_schedule_depends_on_its_own_horizon_not_on_how_long_a_run_is():
    a, b = LRSchedule(total_steps=5000), LRSchedule(total_steps=5000)
    assert [a(s) for s in range(4990, 5050)] == [b(s) for s in range(4990, 5050)]


@pytest.mark.parametrize(
    "kwargs", [dict(kind="step"), dict(warmup_steps=-1), dict(total_steps=0), dict(min_lr_ratio=2.0)]
)
def test_bad_schedules_are_rejected(kwargs):
    with pytest.raises(UserError):
        LRSchedule(**kwargs)


def test_a_horizon_shorter_than_the_warmup_stays_in_warmup():
    """A 4-step trial of a recipe with 100 warmup steps trains, at the warmup's LR."""
    schedule = LRSchedule(warmup_steps=100, total_steps=4)
    assert [schedule(s) for s in range(6)] == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05, 0.06])
