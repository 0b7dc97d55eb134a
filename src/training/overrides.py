"""A run's command-line overrides: the key each sets, and how a continuation replays a checkpoint's."""

from __future__ import annotations

from src.errors import UserError


def override_key(override: str) -> str:
    """The key an override sets: `a.b=1`, `+a.b=1` and `~a.b` all name `a.b`."""
    return override.lstrip("+~").split("=", 1)[0]


def replay_overrides(history: list[str], current: list[str]) -> list[str]:
    """The checkpointed run's overrides, minus the keys given again now, then today's."""
    current_keys = {override_key(o) for o in current}
    return [o for o in history if override_key(o) not in current_keys] + list(current)


# Keys by which an override makes Hydra import and call code, or look for configs elsewhere.
CODE_KEYS = {"_target_", "_partial_", "_args_"}


def check_replay_runs_no_code(history: list[str], current: list[str], ckpt_path: str) -> None:
    """A checkpoint's stored overrides are data: one that would run code is replayed only when
    given again now (same trust model as the file itself, README's Reliability)."""
    current_keys = {override_key(o) for o in current}
    risky = [
        o
        for o in history
        if override_key(o) not in current_keys
        and (override_key(o).startswith("hydra") or CODE_KEYS & set(override_key(o).split(".")))
    ]
    if risky:
        raise UserError(
            f"{ckpt_path}: its stored overrides would run code or read configs from elsewhere "
            f"({' '.join(risky)}); if you trust the file, pass them again on the command line"
        )
