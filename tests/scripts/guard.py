"""Run a server in this process's group, and end the whole group when the test process that started us dies,
however it dies (a kill -9 included): the kernel's parent-death signal, not only the test's teardown.

usage: guard.py COMMAND [ARGS...]
The test starts us with start_new_session=True, so the group is ours and the server's (its workers included).
SIGTERM (the parent-death signal) ends the group: SIGTERM first, SIGKILL after 10 s. The tests' stop() kills the
group at once.
"""

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG = 1


def main() -> int:
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before prctl took effect
        return 1
    child = subprocess.Popen(sys.argv[1:])

    def end(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(0, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        os.killpg(0, signal.SIGKILL)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    return child.wait()


if __name__ == "__main__":
    sys.exit(main())
