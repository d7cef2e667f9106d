"""A backend that trains forever and starts a process of its own: for the stop-signal tests (tests/test_faults.py).

It wraps the example NumPy backend (on the path through the ``numpy_backend`` fixture). On its first
batch its worker starts a helper in a session of its own (as torchrun starts ranks), writes
"WORKER_PID HELPER_PID" to $CNNBENCH_TEST_PID_FILE, then sleeps: the test signals the parent and
checks that both processes are gone.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from cnnbench import hookimpl
from cnnbench_numpy.backend import NumpyBackend, NumpySession

PID_FILE_ENV = "CNNBENCH_TEST_PID_FILE"


class _EndlessSession(NumpySession):
    def train_batches(self, batch_indices):
        path = os.environ.get(PID_FILE_ENV)
        if path and not os.path.exists(path):
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
            with open(path + ".tmp", "w") as handle:
                handle.write(f"{os.getpid()} {helper.pid}\n")
            os.replace(path + ".tmp", path)
        time.sleep(600)
        return super().train_batches(batch_indices)


class EndlessBackend(NumpyBackend):
    name = "endless"
    framework = "NumPy that never finishes an epoch"

    def create_session(self, spec, config, variant=None):
        super().create_session(spec, config, variant)  # the backend's own checks (device)
        return _EndlessSession(spec, config)


@hookimpl
def register_backends(register):
    register(EndlessBackend())
