"""The runner-worker message protocol: every request and event survives a round trip; bad lines fail clearly."""

from __future__ import annotations

import json
import math

import pytest

from cnnbench import messages
from cnnbench.config import DataConfig, TrainConfig
from cnnbench.messages import (
    PROTOCOL_VERSION,
    CheckRequest,
    CheckResult,
    Error,
    MeasureRequest,
    NotAMessage,
    Phase,
    Progress,
    ProtocolError,
    Result,
    Unavailable,
)
from cnnbench.results import DIVERGED, EpochRecord, Measurement, Phases

MEASUREMENT = Measurement(
    status=DIVERGED,
    reason="loss became nan at epoch 2, batch 3",
    epochs=(EpochRecord(1, 0.5, 1.25, 600, 480.0, 0.9), EpochRecord(2, 0.25, 1.0, 600, 600.0)),
    phases=Phases(
        import_s=0.5, build_s=0.1, load_data_s=0.01, first_epoch_s=1.25, train_s=2.25, eval_s=0.2, total_s=3.0
    ),
    train_throughput=600.0,
    train_throughput_samples=(600.0,),
    eval_throughput=1000.0,
    test_accuracy=0.91,
    test_loss=0.3,
    peak_rss_mb=512.5,
    peak_device_memory_mb=None,
    time_to_accuracy_s=1.25,
)

EVENTS = [
    Phase("import"),
    Phase("train", device="cpu (1 thread)"),
    Progress(epoch=1, done=50, total=120),
    Result(
        MEASUREMENT,
        "cpu",
        3_255_914,
        settings={"intra_op_threads": 1, "global_batch": 100},
        model={"name": "lenet", "input_shape": [28, 28, 1]},
        preprocessing={"scale": "0..1"},
    ),
    CheckResult(
        {"status": "FAIL", "message": "logits: max abs diff 1 > tolerance 0.1", "checks": {"logits": {"passed": False}}}
    ),
    messages.FollowUpCheck({"status": "PASS", "message": "", "checks": {}, "seconds": 2.5}),
    Error("RuntimeError: injected failure", peak_rss_mb=100.0),
    Error("KeyboardInterrupt"),
    Unavailable("No module named 'torch'"),
]

REQUESTS = [
    MeasureRequest(
        "torch",
        None,
        TrainConfig(epochs=2, threads=1, backend_options={"torch.compile": "true"}),
        DataConfig(dataset="synthetic", limit_train=600, options={"n_train": 600}),
        target_accuracy=0.5,
        evaluate_each_epoch=True,
    ),
    MeasureRequest("keras", "jax", TrainConfig(), DataConfig()),
    MeasureRequest(
        "jax",
        None,
        TrainConfig(),
        DataConfig(),
        then_check=CheckRequest(
            "jax", None, TrainConfig(), (28, 28, 1), 10, None, {"adam": 1e-3}, 0, 3, "glorot-uniform", 16, probes=False
        ),
    ),
    CheckRequest(
        "tf",
        None,
        TrainConfig(threads=2, dropout=0.0),
        (32, 32, 3),
        10,
        0.2,
        {"adam": 1e-3, "sgd": 0.01},
        seed=1,
        steps=3,
        init="normal",
        batch=16,
    ),
]


@pytest.mark.parametrize("event", EVENTS, ids=lambda event: type(event).__name__)
def test_every_event_survives_a_round_trip(event: messages.Event) -> None:
    line = messages.encode(event)
    assert "\n" not in line
    raw = json.loads(line)
    assert raw["version"] == PROTOCOL_VERSION and raw["event"] == event.kind
    decoded = messages.decode(line + "\n")
    assert decoded == event and type(decoded) is type(event)


def test_the_result_carries_a_real_measurement() -> None:
    decoded = messages.decode(messages.encode(EVENTS[3]))
    assert isinstance(decoded, Result) and isinstance(decoded.measurement, Measurement)
    assert isinstance(decoded.measurement.phases, Phases) and isinstance(decoded.measurement.epochs[0], EpochRecord)
    assert decoded.measurement.epochs[1].test_accuracy is None
    assert decoded.measurement.train_throughput_samples == (600.0,)


def test_a_diverged_loss_survives_as_nan() -> None:
    event = Result(Measurement(epochs=(EpochRecord(1, math.nan, 1.0, 10, 10.0),)), "cpu", 1)
    decoded = messages.decode(messages.encode(event))
    assert isinstance(decoded, Result) and math.isnan(decoded.measurement.epochs[0].train_loss)


@pytest.mark.parametrize("request_", REQUESTS, ids=lambda request: type(request).__name__)
def test_every_request_survives_a_round_trip(request_: messages.Request) -> None:
    text = messages.encode_request(request_)
    assert json.loads(text)["version"] == PROTOCOL_VERSION and json.loads(text)["job"] == request_.job
    assert messages.decode_request(text) == request_


def test_a_line_of_another_protocol_version_names_both_versions() -> None:
    line = json.dumps({"version": PROTOCOL_VERSION + 1, "event": "phase", "name": "import"})
    expected = rf"version {PROTOCOL_VERSION + 1}, this cnnbench speaks {PROTOCOL_VERSION}"
    with pytest.raises(ProtocolError, match=expected):
        messages.decode(line)


def test_a_line_without_a_version_is_from_an_older_cnnbench() -> None:
    with pytest.raises(ProtocolError, match="no protocol version") as caught:
        messages.decode(json.dumps({"event": "result", "measurement": {}}))
    assert not isinstance(caught.value, NotAMessage)


def test_an_unknown_kind_is_named() -> None:
    with pytest.raises(ProtocolError, match="unknown worker message kind 'heartbeat'"):
        messages.decode(json.dumps({"version": PROTOCOL_VERSION, "event": "heartbeat"}))


@pytest.mark.parametrize("line", ["", "I0000 00:00:00 torchrun: starting\n", "[1, 2]", '"event"', "{", '{"name": "x"}'])
def test_garbage_is_not_a_message(line: str) -> None:
    with pytest.raises(NotAMessage):
        messages.decode(line)


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [
        ({"event": "progress", "epoch": 1}, "malformed 'progress' message"),
        ({"event": "result", "measurement": "fast", "device": "cpu", "parameters": 1}, "malformed 'result' message"),
        ({"event": "error"}, "malformed 'error' message"),
    ],
)
def test_missing_or_malformed_fields_are_a_protocol_error(payload: dict[str, object], fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        messages.decode(json.dumps({"version": PROTOCOL_VERSION, **payload}))


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("[]", "not a JSON object"),
        (json.dumps({"job": "measure"}), "no protocol version"),
        (json.dumps({"version": 99, "job": "measure"}), "version 99"),
        (json.dumps({"version": PROTOCOL_VERSION, "job": "train"}), "unknown worker job 'train'"),
        (json.dumps({"version": PROTOCOL_VERSION, "job": "check", "backend": "torch"}), "malformed 'check' request"),
    ],
)
def test_bad_requests_are_a_protocol_error(text: str, fragment: str) -> None:
    with pytest.raises(ProtocolError, match=fragment):
        messages.decode_request(text)


def test_envelope_keys_never_collide_with_fields() -> None:
    import dataclasses

    envelope = {messages.VERSION_KEY, messages.EVENT_KEY, messages.JOB_KEY}
    for cls in [*messages.EVENTS.values(), *messages.JOBS.values()]:
        assert not envelope & {f.name for f in dataclasses.fields(cls)}, cls


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, True),
        ({"LOCAL_RANK": "0"}, False),  # a launcher's rank: the launcher's shutdown must reach it
        ({"CNNBENCH_HOSTS": "a:1,b:2", "CNNBENCH_HOST_INDEX": "1"}, False),
        ({"CNNBENCH_HOSTS": "a:1,b:2"}, False),  # malformed: the normal exit, whose error path is known
        ({"CNNBENCH_HOSTS": "a:1"}, True),
    ],
)
def test_only_a_worker_alone_in_its_job_skips_the_interpreter_teardown(
    environ: dict[str, str], expected: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cnnbench import worker

    for name in ("LOCAL_RANK", "CNNBENCH_HOSTS", "CNNBENCH_HOST_INDEX"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    assert worker.alone() is expected
