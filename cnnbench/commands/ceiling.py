"""``cnnbench ceiling``: this machine's fp32 matmul ceiling, the yardstick of the efficiency column."""

from __future__ import annotations

import os

import click

from cnnbench.commands.common import console
from cnnbench.config import check_threads
from cnnbench.errors import UsageError
from cnnbench.frameworks import available_cores
from cnnbench.report import literal


@click.command("ceiling")
@click.option("--threads", type=int, default=None, help="Threads [all cores].")
@click.option("--refresh", is_flag=True, help="Measure again instead of using the cached value.")
def ceiling_command(threads: int | None, refresh: bool) -> None:
    """This machine's fp32 matmul ceiling (GFLOP/s), the yardstick of the efficiency column."""
    from cnnbench import ceiling

    if threads is not None and threads < 1:
        raise UsageError(f"threads must be at least 1, got {threads}")
    check_threads(threads, available_cores())
    threads = threads or os.cpu_count() or 1
    with console.status("measuring fp32 GEMM..."):
        value = ceiling.ceiling(threads, refresh=refresh)
    if not value:
        raise UsageError("could not measure the matmul ceiling (neither NumPy nor PyTorch ran the probe)")
    libraries = ", ".join(f"{name} {gflops:,.0f}" for name, gflops in value["per_library"].items())
    console.print(
        literal(
            f"fp32 matmul ceiling, {value['size']}x{value['size']}, {value['threads']} threads: {value['gflops']:,.0f} "
            f"GFLOP/s ({libraries}); cached in {ceiling.cache_file()}"
        )
    )


command: click.Command = ceiling_command
