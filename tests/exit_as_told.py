"""A command for tests/test_forked_cli.py: prints, then ends as its argument says."""

import os
import sys
import threading
import time

if __name__ == "__main__":
    print("to stdout")
    print("to stderr", file=sys.stderr)
    how = sys.argv[1]
    if how == "thread":  # a non-daemon thread the interpreter waits for before it exits
        threading.Thread(target=lambda: (time.sleep(0.5), print("thread done"))).start()
    elif how == "env":
        print(os.environ.get("PYTEST_CURRENT_TEST"))
    elif how == "message":
        sys.exit("a message")
    elif how == "raise":
        raise ValueError("raised")
    elif how == "interrupt":
        raise KeyboardInterrupt
    elif how == "sleep":
        time.sleep(60)
    elif how != "return":
        sys.exit(int(how))
