"""One training step and one evaluation batch of each available backend, on synthetic data.

Each round is timed after a device sync; warm-up rounds (compile, JIT, allocator and cache
warm-up) run first and are not recorded, since pytest-benchmark warms nothing up by default.
"""

from __future__ import annotations

import pytest


@pytest.mark.benchmark(group="train step (batch 100)")
def test_train_step(benchmark, bench_session, rounds):
    timed, warmup = rounds
    session = bench_session.session

    def step(batch):
        losses = session.train_batches(batch)
        session.sync()
        return losses

    benchmark.extra_info.update(bench_session.info(), samples_per_round=bench_session.batch)
    losses = benchmark.pedantic(
        step, setup=lambda: ((bench_session.next_batch(),), {}), rounds=timed, warmup_rounds=warmup, iterations=1
    )
    assert len(losses) == 1 and losses[0] == losses[0]  # one finite-or-not-NaN loss per step
    benchmark.extra_info["samples_per_s_median"] = bench_session.batch / benchmark.stats.stats.median


@pytest.mark.benchmark(group="eval batch (1000 images)")
def test_eval_batch(benchmark, bench_session, rounds):
    timed, warmup = rounds
    session = bench_session.session

    def evaluate():
        result = session.evaluate(bench_session.eval_batch)
        session.sync()
        return result

    benchmark.extra_info.update(bench_session.info(), samples_per_round=bench_session.eval_batch)
    loss, accuracy = benchmark.pedantic(
        evaluate, rounds=max(3, timed // 3), warmup_rounds=max(1, warmup // 3), iterations=1
    )
    assert 0.0 <= accuracy <= 1.0 and loss == loss
    benchmark.extra_info["samples_per_s_median"] = bench_session.eval_batch / benchmark.stats.stats.median
