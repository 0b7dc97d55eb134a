"""Train (or continue training) a SmolLM2 decoder: `python -m src.train [overrides]`.

Hydra composes `conf/train.yaml`, the config is checked, and src/training/run.py builds the
objects and calls `trainer.fit`. torch and Lightning take seconds each to import, so each
import waits for the step that needs it: a typo in an override or a bad number fails before
torch is loaded, a value that needs the model, the tokenizer or a continuation's checkpoint
before Lightning is.

Exit codes: 0 done; 2 bad input, a diverged run or a checkpoint that could not be written (one
`error:` line on stderr); 130 after Ctrl-C and 143 after SIGTERM, in any phase, both once
`last.ckpt` holds the last finished step; anything else is a crash.
In a multi-process run every rank exits: a failed rank ends the others (README: Reliability).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from src.errors import EXIT_SIGTERM, EXIT_USER_ERROR, UserError, exit_on_user_error
from src.training.overrides import override_key
from src.training.run_folder import (
    check_fresh_folder,
    check_run_name,
    claim_fresh_folder,
    claim_named_folder,
    launch_record,
    release_unused_claim,
    takes_the_lock,
)
from src.training.value_checks import check_values


def run_dir_of(ckpt_path: str | None, runs: str, run_name: str | None) -> str:
    """A continuation writes into the run folder its checkpoint lives in; a fresh run into
    `<runs>/<run_name>`, or without one into a folder no other run has."""
    if ckpt_path:
        path = Path(ckpt_path).resolve()
        if path.parent.name == "checkpoints":
            return str(path.parent.parent)
    if not run_name:
        return claim_fresh_folder(runs)
    check_run_name(str(run_name))
    return claim_named_folder(os.path.join(runs, str(run_name)))


OmegaConf.register_new_resolver("mul", lambda a, b: int(a) * int(b), replace=True)
OmegaConf.register_new_resolver("run_dir", run_dir_of, replace=True)
# The launch folder, known before Hydra's runtime is: a -m sweep resolves its folder earlier.
OmegaConf.register_new_resolver("cwd", os.getcwd, replace=True)


def one_line(err: Exception) -> str:
    """Hydra's multi-line config errors (with their OmegaConf cause) folded into one line."""
    if isinstance(err, MissingConfigException) and err.options:
        return f"{str(err).splitlines()[0]}; choose one of {', '.join(sorted(err.options))}"
    parts = [err, err.__cause__] if err.__cause__ else [err]
    lines = [line.strip().rstrip(".") for part in parts for line in str(part).splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(("full_key:", "object_type=")))


CONFIG_GROUPS = frozenset(
    entry.name
    for entry in (Path(__file__).parent / "conf").iterdir()
    if entry.is_dir() and entry.name not in ("hydra", "__pycache__")
)


def continued_groups_first(args: list[str]) -> list[str]:
    """`args`, with the config groups the continued run chose (data=cosmopedia_v2, trainer=ddp,
    an experiment) put first where today's overrides set a key inside a group they do not name.

    Hydra composes today's overrides before the checkpoint's are replayed (checked_config), so
    `ckpt_path=<a streamed run's> data.skip_bad_files=true` would be refused against the default
    data group, which has no such key: `main` composes again with them. The replay composes the
    same config either way.
    """
    given = {override_key(arg): arg for arg in args if "=" in arg or arg.startswith("~")}
    ckpt_path = given.get("ckpt_path", "").partition("=")[2]
    inside = {key.split(".")[0] for key in given if "." in key} & CONFIG_GROUPS
    if not ckpt_path or not inside - given.keys():
        return args
    from src.training import checkpoint as ckpt  # torch: only for a continuation Hydra refused

    try:
        saved = ckpt.read_checkpoint(Path(ckpt_path), weights=False)
    except UserError:  # Hydra's own error stands; the checkpoint is not the problem it names
        return args
    history = ckpt.migrate_overrides(saved.get(ckpt.OVERRIDES, []))
    groups = [o for o in history if override_key(o) in CONFIG_GROUPS and override_key(o) not in given]
    return groups + args


def check_recipe_exists(overrides: list[str], choices: DictConfig) -> None:
    """The recipe group is optional (a model without a recipe trains the defaults), so Hydra
    drops an `experiment=` it cannot find: a typo would train the defaults."""
    if not any(override.startswith(("experiment=", "+experiment=")) for override in overrides):
        return
    known = GlobalHydra.instance().config_loader().get_group_options("experiment")
    if (name := choices.get("experiment")) not in known:
        raise UserError(f"no recipe experiment={name}; choose one of {', '.join(known)}, or ~experiment")


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@exit_on_user_error
def hydra_main(cfg: DictConfig) -> None:
    check_recipe_exists(list(HydraConfig.get().overrides.task), HydraConfig.get().runtime.choices)
    check_values(cfg)  # before torch: src/training/value_checks.py
    from src.training.checked_config import checked_config  # torch and the tokenizer

    checked = checked_config(cfg, list(HydraConfig.get().overrides.task))
    from src.training import run  # Lightning and all the rest: once the config has passed

    run.check_not_a_multiprocess_sweep(HydraConfig.get().mode, cfg.trainer)
    if cfg.run_name and not cfg.ckpt_path and takes_the_lock():  # the other ranks write where rank 0 does
        check_fresh_folder(Path(cfg.paths.output_dir), cfg.run_name)
    # Hydra's record of the launch (config.yaml: the config the run uses, a continuation's replayed),
    # written by global rank 0 alone once it holds the run folder.
    record = launch_record(checked.cfg, HydraConfig.instance().cfg) if takes_the_lock() else {}
    run.train(checked, record)


def exit_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM before the run's own handling (src/training/run.py: fit) ends the command with
    143 all the same, through `main`'s cleanup: a fresh run folder claimed so far is removed."""
    sys.exit(EXIT_SIGTERM)


@exit_on_user_error  # a bad run_name, found while Hydra resolves the run folder
def main() -> None:
    """The CLI. Hydra's own errors (unknown preset or key, bad syntax, an unwritable run folder)
    reach us instead of Hydra's printout, and leave as one `error:` line with exit code 2."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    if "experiment=null" in sys.argv[1:]:  # Hydra cannot null a default chosen by interpolation
        print("error: experiment=null cannot drop the recipe; use ~experiment", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    if any(
        override_key(arg) == "hydra.output_subdir" and arg.partition("=")[2] != "null" for arg in sys.argv[1:]
    ):
        # Hydra would write it before the run folder's lock is checked, into a live run's folder
        # too. (Lightning starts the other ranks of a DDP run with `hydra.output_subdir=null`.)
        print(
            "error: hydra.output_subdir is fixed: the run writes .hydra/ once it holds its folder; "
            "drop the override",
            file=sys.stderr,
        )
        sys.exit(EXIT_USER_ERROR)
    try:
        try:
            hydra_main()
        except ConfigCompositionException:
            with_groups = continued_groups_first(sys.argv[1:])  # a continuation's key of its own groups
            if with_groups == sys.argv[1:]:
                raise
            sys.argv[1:] = with_groups  # the other ranks of a DDP run are started with these
            GlobalHydra.instance().clear()
            hydra_main()
    except (ConfigCompositionException, OverrideParseException) as err:
        print(f"error: {one_line(err)}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except OSError as err:
        if err.filename is None:
            raise
        print(
            f"error: {err.filename}: {err.strerror}; pick a writable paths.root_dir or hydra.run.dir",
            file=sys.stderr,
        )
        sys.exit(EXIT_USER_ERROR)
    finally:
        release_unused_claim()


if __name__ == "__main__":
    main()
