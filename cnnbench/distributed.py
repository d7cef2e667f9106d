"""Data-parallel runs: the one place that knows the cluster, the launchers and the global batch.

Every backend trains data-parallel through its framework's own engine (DistributedDataParallel,
tf.distribute, jax.sharding, keras.distribution); this module only says *where*: how many devices
per host (``TrainConfig.devices``), which hosts (``CNNBENCH_HOSTS`` / ``CNNBENCH_HOST_INDEX``, the
same list on every host), and how each framework's launcher or cluster description is spelled for
them. The harness still owns the batch order: a worker hands global-batch index rows to its
session, and the session takes its replicas' share (``shard_bounds``).

Nothing here imports a framework.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
from collections.abc import Mapping
from dataclasses import dataclass

from cnnbench.config import TrainConfig
from cnnbench.errors import UsageError

#: ``address:port`` of every host, comma-separated, in the same order on every host; host 0
#: coordinates (torchrun master, JAX coordinator); TensorFlow's workers listen on their own entry.
HOSTS_ENV = "CNNBENCH_HOSTS"
#: This host's position in ``CNNBENCH_HOSTS`` (0-based).
HOST_INDEX_ENV = "CNNBENCH_HOST_INDEX"
#: The only address single-host runs use: ranks talk over the loopback interface.
LOOPBACK = "127.0.0.1"
#: Set by torchrun in each rank: which process of this host it is.
LOCAL_RANK_ENV = "LOCAL_RANK"


@dataclass(frozen=True)
class Cluster:
    """The hosts of a run; ``hosts == ()`` means this machine only."""

    hosts: tuple[str, ...] = ()
    index: int = 0

    @property
    def num_hosts(self) -> int:
        return max(1, len(self.hosts))

    @property
    def multi_host(self) -> bool:
        return len(self.hosts) > 1

    @property
    def coordinator(self) -> tuple[str, int]:
        """(address, port) of host 0."""
        return split_address(self.hosts[0])

    def describe(self) -> str:
        if not self.multi_host:
            return "single host"
        return f"host {self.index} of {self.num_hosts} (coordinator {self.hosts[0]})"


def split_address(entry: str) -> tuple[str, int]:
    host, sep, port = entry.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{HOSTS_ENV} entries must look like ADDRESS:PORT, got {entry!r}")
    return host.strip("[]"), int(port)


def cluster(environ: Mapping[str, str] | None = None) -> Cluster:
    """The cluster described by ``CNNBENCH_HOSTS`` / ``CNNBENCH_HOST_INDEX`` (one host when unset)."""
    environ = os.environ if environ is None else environ
    text = environ.get(HOSTS_ENV, "").strip()
    if not text:
        return Cluster()
    hosts = tuple(part.strip() for part in text.split(",") if part.strip())
    for entry in hosts:
        split_address(entry)
    index_text = environ.get(HOST_INDEX_ENV, "").strip()
    if len(hosts) > 1 and not index_text:
        raise UsageError(
            f"{HOSTS_ENV} lists {len(hosts)} hosts: set {HOST_INDEX_ENV} to this host's position (0..{len(hosts) - 1})"
        )
    try:
        index = int(index_text or "0")
    except ValueError:
        raise UsageError(f"{HOST_INDEX_ENV} must be an integer, got {index_text!r}") from None
    if not 0 <= index < len(hosts):
        raise UsageError(f"{HOST_INDEX_ENV}={index} is outside 0..{len(hosts) - 1} ({len(hosts)} hosts in {HOSTS_ENV})")
    return Cluster(hosts, index)


class SharedLifetime:
    """Counts the open sessions that share one per-process resource (a process group, a global distribution).

    The parity check opens a second session in the worker's process: the resource must outlive the
    first one's ``close`` and be released by the last.
    """

    def __init__(self) -> None:
        self.open_sessions = 0

    def opened(self) -> None:
        """One more session uses the resource."""
        self.open_sessions += 1

    def closed(self) -> bool:
        """One session fewer; True when it was the last, so the caller releases the resource now."""
        self.open_sessions = max(0, self.open_sessions - 1)
        return self.open_sessions == 0


def replicas(config: TrainConfig, where: Cluster | None = None) -> int:
    """Data-parallel replicas in the whole run: devices per host x hosts."""
    return config.devices * (where or cluster()).num_hosts


def global_batch_size(config: TrainConfig, where: Cluster | None = None) -> int:
    """Images per optimizer step across all replicas: ``batch_size`` is per device."""
    return config.batch_size * replicas(config, where)


def is_data_parallel(config: TrainConfig, where: Cluster | None = None) -> bool:
    return replicas(config, where) > 1


def shard_bounds(n: int, parts: int, index: int) -> tuple[int, int]:
    """[start, stop) of part ``index`` when ``n`` items are cut into ``parts`` contiguous parts.

    Sizes differ by at most one when ``n`` is not divisible; sessions weight each replica's loss by
    its share of the global batch, so the averaged gradient is still the global batch's.
    """
    if not 0 <= index < parts:
        raise ValueError(f"part {index} of {parts}")
    return (index * n) // parts, ((index + 1) * n) // parts


def is_reporting_process(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this worker sends events: the first process of each host (torchrun's local rank 0)."""
    environ = os.environ if environ is None else environ
    return environ.get(LOCAL_RANK_ENV, "0").strip() in ("", "0")


def free_port(address: str = LOOPBACK) -> int:
    """A TCP port free on ``address`` now (the launcher binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


def loopback_interface() -> str | None:
    """The name of the loopback network interface ("lo" on Linux), for GLOO/NCCL_SOCKET_IFNAME."""
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        return None
    return next((name for name in names if name == "lo"), next((name for name in names if name.startswith("lo")), None))


def torchrun_arguments(devices: int, where: Cluster) -> list[str]:
    """``python`` arguments that start torchrun with one rank per device.

    One host: a static rendezvous on 127.0.0.1 and a free port, nothing else reachable. Several
    hosts: torchrun's static rendezvous at host 0 (``--nnodes``, ``--node-rank``,
    ``--master-addr``, ``--master-port``), node rank = this host's index. No restarts: a dead
    rank ends the run (torchrun stops the others) instead of training again from the start.
    """
    args = ["-m", "torch.distributed.run", "--nproc-per-node", str(devices), "--max-restarts", "0"]
    args += ["--monitor-interval", "0.5"]
    if where.multi_host:
        address, port = where.coordinator
        args += ["--nnodes", str(where.num_hosts), "--node-rank", str(where.index)]
        return [*args, "--master-addr", address, "--master-port", str(port)]
    args += ["--nnodes", "1", "--node-rank", "0"]
    return [*args, "--master-addr", LOOPBACK, "--master-port", str(free_port()), "--local-addr", LOOPBACK]


def tf_config(where: Cluster) -> str:
    """``TF_CONFIG`` for MultiWorkerMirroredStrategy: every host a worker, this one at its index."""
    return json.dumps({"cluster": {"worker": list(where.hosts)}, "task": {"type": "worker", "index": where.index}})


def with_forced_host_devices(xla_flags: str, devices: int) -> str:
    """``XLA_FLAGS`` with ``--xla_force_host_platform_device_count=devices`` (replacing any earlier count)."""
    kept = [flag for flag in xla_flags.split() if not flag.startswith("--xla_force_host_platform_device_count")]
    return " ".join([*kept, f"--xla_force_host_platform_device_count={devices}"])


def parse_device_counts(text: str, where: Cluster | None = None) -> list[int]:
    """``--devices``: ``N`` scales 1, 2, 4 ... N (powers of two, then N); ``a,b,c`` exactly those.

    On several hosts a single ``N`` means N devices on each host, without the sweep (a one-device
    baseline is not a multi-host run).
    """
    parts = [part.strip() for part in str(text).split(",") if part.strip()]
    if not parts:
        raise UsageError("--devices needs a count or a comma list of counts, e.g. 2 or 1,2,4")
    counts = []
    for part in parts:
        if not part.isdigit() or int(part) < 1:
            raise UsageError(f"--devices takes positive integers, got {part!r}")
        counts.append(int(part))
    if len(counts) == 1 and counts[0] > 1 and not (where or cluster()).multi_host:
        top = counts[0]
        counts = sorted({*(2**k for k in range(top.bit_length()) if 2**k <= top), top})
    return sorted(set(counts))


_ROOT_CAUSE = re.compile(r"rank\s*:\s*(\d+)\s*\(local_rank\s*:\s*(\d+)\)\s*exitcode\s*:\s*(-?\d+)", re.S)


def describe_launcher_failure(log_text: str, reporting_error: str | None = None) -> str | None:
    """One line from torchrun's failure summary: which rank died first and how; None if there is none.

    ``reporting_error`` is what the reporting rank (local rank 0) said, if it failed too: when it
    is the root cause its own message is the better reason (None is returned); otherwise it is
    appended, since it usually only says that a peer went away.
    """
    if "ChildFailedError" not in log_text and "Root Cause" not in log_text:
        return None
    section = log_text.split("Root Cause", 1)[-1]
    match = _ROOT_CAUSE.search(section) or _ROOT_CAUSE.search(log_text)
    if not match:
        return "a distributed worker failed (torchrun stopped the other ranks)"
    rank, local_rank, code = (int(group) for group in match.groups())
    if local_rank == 0 and reporting_error:
        return None
    if code < 0:
        try:
            how = f"killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    described = f"distributed worker rank {rank} (local rank {local_rank}) {how}; torchrun stopped the other ranks"
    if reporting_error:
        short = reporting_error if len(reporting_error) <= 160 else reporting_error[:157] + "..."
        described += f" (local rank 0 then failed: {short})"
    return described
