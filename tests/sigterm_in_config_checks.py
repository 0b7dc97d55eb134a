"""For tests/test_run_folder.py: src.train's CLI, sent SIGTERM while it checks the config."""

import os
import signal
import sys

import src.train


def terminated(cfg: object) -> None:
    os.kill(os.getpid(), signal.SIGTERM)
    sys.exit("SIGTERM did not stop the command")


if __name__ == "__main__":
    src.train.check_values = terminated
    src.train.main()
