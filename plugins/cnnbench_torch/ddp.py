"""PyTorch data-parallel: DistributedDataParallel in each rank that torchrun started.

The harness launches the worker under ``python -m torch.distributed.run`` (see
``TorchBackend.worker_launcher``); every rank builds the same session, loads the whole dataset,
and trains on its contiguous share of each global-batch row. DDP averages the gradients across
ranks (gloo on CPU, NCCL on CUDA) during ``backward``; each rank's loss is weighted by its share
of the global batch, so the average is the global batch's mean-loss gradient even when the
batch does not divide evenly.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

import numpy as np

from cnnbench.config import TrainConfig
from cnnbench.distributed import SharedLifetime, shard_bounds
from cnnbench.errors import BackendUnavailable
from cnnbench.frameworks import TORCH
from cnnbench.spec import ModelSpec
from cnnbench_torch.backend import TorchSession

#: How long a collective may wait for a missing rank. torchrun normally stops the group within a
#: second when a rank dies; this bounds a hang if the launcher itself is gone.
COLLECTIVE_TIMEOUT = timedelta(minutes=5)


def init_process_group(torch, device_type: str) -> str:
    """Join torchrun's group once per process (sessions of the parity check share it)."""
    dist = torch.distributed
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise BackendUnavailable("torch data-parallel sessions run under torchrun (RANK / WORLD_SIZE are not set)")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT)
    return dist.get_backend()


class DDPTorchSession(TorchSession):
    """One rank of a DistributedDataParallel group; rank 0's view is what the worker reports."""

    #: The sessions of this process that use torchrun's group: destroyed when the last one closes.
    process_group_users = SharedLifetime()

    def __init__(self, spec: ModelSpec, config: TrainConfig):
        import torch

        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(config.devices)))
        use_cuda = config.device in ("auto", "cuda") and torch.cuda.is_available()
        if config.device == "cuda" and not use_cuda:
            raise BackendUnavailable(TORCH.no_gpu_reason())
        if use_cuda:
            if torch.cuda.device_count() < self.local_world:
                seen = f"torch sees {torch.cuda.device_count()} CUDA device(s)"
                raise BackendUnavailable(f"{self.local_world} devices per host requested, {seen}")
            torch.cuda.set_device(self.local_rank)
        # Simulated devices share the CPU: each rank gets its share of the requested threads.
        self.rank_threads = None if use_cuda else max(1, (config.threads or os.cpu_count() or 1) // self.local_world)
        if self.rank_threads:
            torch.set_num_threads(self.rank_threads)
        self.process_group = init_process_group(torch, "cuda" if use_cuda else "cpu")
        self.dist = torch.distributed
        self.rank, self.world = self.dist.get_rank(), self.dist.get_world_size()
        super().__init__(spec, config)
        from torch.nn.parallel import DistributedDataParallel

        # DDP broadcasts rank 0's parameters, so a framework-initialised model starts equal everywhere.
        self.ddp = DistributedDataParallel(self.model, device_ids=[self.local_rank] if use_cuda else None)
        torch.manual_seed(config.seed * 1_000_003 + self.rank)  # dropout: an independent stream per rank
        in_all = f", {self.world} in all" if self.world != self.local_world else ""
        if self.dev.type == "cuda":
            self.device = f"{self.local_world} x {self.device}{in_all}"
        else:
            self.device = f"cpu ({self.local_world} process{'es' if self.local_world != 1 else ''}{in_all})"
        DDPTorchSession.process_group_users.opened()

    def _train_batches(self, batch_indices: np.ndarray) -> np.ndarray:
        torch, F = self.torch, self.torch.nn.functional
        rows = batch_indices
        global_batch = rows.shape[1]
        start, stop = shard_bounds(global_batch, self.world, self.rank)
        local = torch.from_numpy(np.ascontiguousarray(rows[:, start:stop])).to(self.dev)
        # DDP divides the summed gradients by the world size: a loss of sum * world / global_batch
        # makes that the gradient of the global batch's mean loss.
        weight = self.world / global_batch
        self.ddp.train()
        loss_sums = []
        for row in local:
            logits = self.ddp(self.x_train.index_select(0, row))
            loss_sum = F.cross_entropy(logits, self.y_train.index_select(0, row), reduction="sum")
            self.optimizer.zero_grad(set_to_none=True)
            (loss_sum * weight).backward()
            self.optimizer.step()
            loss_sums.append(loss_sum.detach())
        losses = torch.stack(loss_sums).double() / global_batch
        self.dist.all_reduce(losses)  # the global batch's mean loss, once per chunk
        return losses.cpu().numpy()

    def evaluate(self, batch_size: int) -> tuple[float, float]:
        """Each rank evaluates its share of the test set; the sums are all-reduced."""
        torch, F = self.torch, self.torch.nn.functional
        self.model.eval()
        n = self.x_test.shape[0]
        start, stop = shard_bounds(n, self.world, self.rank)
        totals = torch.zeros(2, device=self.dev, dtype=torch.float64)  # loss sum, correct
        with torch.inference_mode():
            for first in range(start, stop, batch_size):
                last = min(first + batch_size, stop)
                logits = self.model(self.x_test[first:last])
                labels = self.y_test[first:last]
                totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
                totals[1] += (logits.argmax(dim=1) == labels).sum().double()
        self.dist.all_reduce(totals)
        return float(totals[0]) / n, float(totals[1]) / n

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        settings.update(
            data_parallel="torch DistributedDataParallel (torchrun)",
            process_group=self.process_group,
            world_size=self.world,
            processes_per_host=self.local_world,
        )
        if self.rank_threads:
            settings["intra_op_threads"] = self.rank_threads
            settings["threads_note"] = f"{self.rank_threads} intra-op thread(s) in each of {self.local_world} processes"
        return settings

    def close(self) -> None:
        del self.ddp
        super().close()
        if DDPTorchSession.process_group_users.closed() and self.dist.is_initialized():
            self.dist.destroy_process_group()
