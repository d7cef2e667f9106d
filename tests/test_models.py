"""Models as data: the registry of networks, the new layers' shapes and counts, the float64 reference's batch
norm, residual and pooling against finite differences, and the conformance engine on batch-norm models."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cnnbench import reference as ref
from cnnbench.backend import model_unsupported_reason
from cnnbench.config import TrainConfig
from cnnbench.conformance import check_backend
from cnnbench.errors import UsageError
from cnnbench.initializers import initial_weights
from cnnbench.models import Model, zoo
from cnnbench.plugins import load_registry, model_problems
from cnnbench.spec import (
    BatchNorm,
    Conv2D,
    Dense,
    Flatten,
    GlobalAvgPool,
    ModelSpec,
    Residual,
)

#: A ResNet small enough for float64 finite differences: every new layer, a stride-2 block with a projection.
TINY_RESNET = zoo.resnet((8, 8, 3), 10, blocks_per_stage=1, widths=(4, 8, 16), name="tiny-resnet")


# --- counts -------------------------------------------------------------------------------------


def test_resnet20_parameters_and_flops_match_a_hand_count():
    spec = zoo.resnet20((32, 32, 3), 10)
    conv = lambda k, c_in, c_out: k * k * c_in * c_out  # noqa: E731 - no bias before batch norm
    bn = lambda c: 2 * c  # noqa: E731 - gamma and beta
    stage1 = 3 * (2 * conv(3, 16, 16) + 2 * bn(16))
    stage2 = conv(3, 16, 32) + conv(3, 32, 32) + 2 * bn(32) + conv(1, 16, 32) + bn(32)
    stage2 += 2 * (2 * conv(3, 32, 32) + 2 * bn(32))
    stage3 = conv(3, 32, 64) + conv(3, 64, 64) + 2 * bn(64) + conv(1, 32, 64) + bn(64)
    stage3 += 2 * (2 * conv(3, 64, 64) + 2 * bn(64))
    total = conv(3, 3, 16) + bn(16) + stage1 + stage2 + stage3 + 64 * 10 + 10
    assert spec.num_params == total == 272_474  # 269,722 with the paper's parameter-free option-A shortcuts
    assert spec.num_state == 2 * (16 + 6 * 16 + 7 * 32 + 7 * 64)  # moving mean and variance of 19 + 2 layers
    macs = 32 * 32 * 16 * 27 + 6 * 32 * 32 * 16 * 144
    macs += 16 * 16 * 32 * (144 + 288 + 16) + 4 * 16 * 16 * 32 * 288
    macs += 8 * 8 * 64 * (288 + 576 + 32) + 4 * 8 * 8 * 64 * 576 + 640
    assert spec.flops_forward == 2 * macs == 81_626_368


def test_vgg8_parameters_match_a_hand_count():
    spec = zoo.vgg8((32, 32, 3), 10)
    convs = [(3, 32), (32, 32), (32, 64), (64, 64), (64, 128), (128, 128)]
    total = sum(9 * a * b + b for a, b in convs) + (4 * 4 * 128) * 256 + 256 + 256 * 10 + 10
    assert spec.num_params == total == 814_122
    assert not spec.has_batch_norm and spec.state_shapes() == {}


def test_stride_two_same_padding_halves_odd_and_even_sizes():
    spec = ModelSpec(
        "s",
        (7, 8, 2),
        3,
        (Conv2D("c", 4, 3, stride=2), GlobalAvgPool("g"), Dense("d", 3, activation=None)),
    )
    assert spec.layer_infos()[0].output_shape == (4, 4, 4)
    assert ref.same_padding(8, 3, 2) == (0, 1) and ref.same_padding(7, 3, 2) == (1, 1)


# --- spec as data -------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", [TINY_RESNET, zoo.vgg8((32, 32, 3), 10), zoo.lenet((28, 28, 1), 10)])
def test_a_spec_round_trips_through_json_and_keeps_its_digest(spec):
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.digest() == spec.digest()


def test_the_digest_tells_networks_apart():
    digests = {
        zoo.resnet20((32, 32, 3), 10).digest(),
        zoo.resnet20((28, 28, 1), 10).digest(),
        zoo.vgg8((32, 32, 3), 10).digest(),
        zoo.lenet((32, 32, 3), 10).digest(),
        zoo.lenet((32, 32, 3), 10, dropout=0.0).digest(),
    }
    assert len(digests) == 5


@pytest.mark.parametrize(
    ("layers", "message"),
    [
        ((Conv2D("a", 4, 3), Conv2D("a", 4, 3), Flatten(), Dense("d", 10, None)), "used twice"),
        ((Conv2D("a", 4, 3), Dense("d", 10, None)), "flat inputs"),
        ((Residual("r", (Conv2D("a", 4, 3, stride=2),)), Flatten(), Dense("d", 10, None)), "shortcut"),
        ((Conv2D("a", 4, 3, activation="gelu"), Flatten(), Dense("d", 10, None)), "activation"),
        ((Conv2D("a", 4, 3), Flatten(), Dense("d", 7, None)), r"not \(10,\)"),
    ],
)
def test_an_inconsistent_spec_is_refused_with_the_reason(layers, message):
    with pytest.raises(ValueError, match=message):
        ModelSpec("bad", (8, 8, 3), 10, layers).validate()


def test_an_unknown_layer_type_in_data_is_refused():
    data = TINY_RESNET.to_dict()
    data["layers"][0]["type"] = "Attention"
    with pytest.raises(ValueError, match="unknown layer type 'Attention'"):
        ModelSpec.from_dict(data)


def test_batch_norm_weights_start_as_the_identity_in_every_scheme():
    for scheme in ("glorot-uniform", "normal"):
        weights = initial_weights(TINY_RESNET, scheme, 0)
        assert weights is not None
        assert (weights["bn/gamma"] == 1).all() and (weights["bn/beta"] == 0).all()
        assert (weights["bn/moving_mean"] == 0).all() and (weights["bn/moving_variance"] == 1).all()


# --- the reference --------------------------------------------------------------------------------


def _random_weights(spec: ModelSpec, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    weights = {name: rng.normal(0, 0.3, size=shape) for name, shape in spec.param_shapes().items()}
    for name in spec.state_shapes():
        weights[name] = np.abs(weights[name]) + (0.5 if name.endswith("variance") else 0.0)
    return weights


def test_reference_gradients_match_finite_differences_with_batch_norm_and_residuals():
    rng = np.random.default_rng(1)
    weights = _random_weights(TINY_RESNET)
    x, y = rng.normal(size=(5, 8, 8, 3)), rng.integers(0, 10, 5)
    _, grads, _ = ref.loss_and_gradients(TINY_RESNET, weights, x, y)
    assert set(grads) == set(TINY_RESNET.trainable_shapes())

    def loss(w):
        return ref.softmax_cross_entropy(ref.forward(TINY_RESNET, w, x, training=True), y)[0]

    for name in grads:
        for _ in range(2):
            index = tuple(int(rng.integers(0, n)) for n in weights[name].shape)
            step = 1e-6
            up = {**weights, name: weights[name].copy()}
            down = {**weights, name: weights[name].copy()}
            up[name][index] += step
            down[name][index] -= step
            numeric = (loss(up) - loss(down)) / (2 * step)
            assert grads[name][index] == pytest.approx(numeric, rel=1e-5, abs=1e-9), name


def test_inference_uses_the_moving_statistics_and_training_the_batch_statistics():
    spec = ModelSpec("bn", (2, 2, 3), 3, (BatchNorm("bn"), GlobalAvgPool("g"), Dense("d", 3, activation=None)))
    weights = _random_weights(spec)
    weights["d/kernel"], weights["d/bias"] = np.eye(3), np.zeros(3)
    x = np.random.default_rng(2).normal(size=(4, 2, 2, 3))
    gamma, beta = weights["bn/gamma"], weights["bn/beta"]
    inference = gamma * (x - weights["bn/moving_mean"]) / np.sqrt(weights["bn/moving_variance"] + 1e-5) + beta
    assert ref.forward(spec, weights, x) == pytest.approx(inference.mean(axis=(1, 2)))
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))  # biased, as the spec says
    training = gamma * (x - mean) / np.sqrt(var + 1e-5) + beta
    assert ref.forward(spec, weights, x, training=True) == pytest.approx(training.mean(axis=(1, 2)))
    moving = ref.moving_statistics(spec, weights, x)
    assert moving["bn/moving_mean"] == pytest.approx(0.9 * weights["bn/moving_mean"] + 0.1 * mean)
    assert moving["bn/moving_variance"] == pytest.approx(0.9 * weights["bn/moving_variance"] + 0.1 * var)


def test_near_ties_inside_residual_blocks_get_an_allowance():
    rng = np.random.default_rng(3)
    weights = _random_weights(TINY_RESNET)
    x, y = rng.normal(size=(4, 8, 8, 3)), rng.integers(0, 10, 4)
    _, grads, _, allowance, count = ref.gradients_and_kinks(TINY_RESNET, weights, x, y, 0.05)
    assert count > 0
    inner = [name for name in allowance if name.startswith("s2b1_") and allowance[name].any()]
    assert inner, "decisions inside a block moved no weight of that block"
    _, none, _, zero, no_ties = ref.gradients_and_kinks(TINY_RESNET, weights, x, y, 0.0)
    assert no_ties == 0 and all(not value.any() for value in zero.values())
    for name in grads:
        np.testing.assert_allclose(none[name], grads[name])


# --- registry ---------------------------------------------------------------------------------------


def test_the_built_in_models_are_registered_by_their_plugin():
    registry = load_registry()
    assert {"lenet", "resnet20", "vgg8"} <= set(registry.models)
    assert registry.models["resnet20"].plugin.name == "models"
    assert registry.spec("lenet", (32, 32, 3), 10).num_params == 4_239_978


def test_an_unknown_model_or_a_bad_dropout_is_a_usage_error():
    registry = load_registry()
    with pytest.raises(UsageError, match=r"model 'nope'"):
        registry.spec("nope", (28, 28, 1), 10)
    with pytest.raises(UsageError, match="no dropout"):
        registry.spec("resnet20", (32, 32, 3), 10, 0.2)


def test_a_model_that_cannot_build_a_valid_spec_is_refused_with_the_reason():
    def broken(input_shape, num_classes, dropout=None):
        return ModelSpec("broken", input_shape, num_classes, (Conv2D("c", 4, 3), Dense("d", num_classes, None)))

    problems = model_problems(Model("broken", "", broken))
    assert problems and "flat inputs" in problems[0]
    assert model_problems(Model("fine", "", zoo.vgg8)) == []
    assert "Model" in model_problems(object())[0]


def test_the_example_plugin_registers_its_model_from_its_own_package(numpy_backend):
    registry = load_registry()
    assert registry.models["lenet-small"].plugin.distribution == "cnnbench-numpy"
    spec = registry.spec("lenet-small", (28, 28, 1), 10)
    assert model_unsupported_reason(registry.backend("numpy").item, spec) is None
    reason = model_unsupported_reason(registry.backend("numpy").item, registry.spec("resnet20", (32, 32, 3), 10))
    assert reason == "numpy does not implement BatchNorm, GlobalAvgPool, Residual (needed by model 'resnet20')"


# --- the conformance engine on batch-norm models ----------------------------------------------------


@pytest.fixture
def reference_backends(fixture_plugins):
    fixture_plugins("reference_backends")
    import reference_backends as module

    return module


CONFIG = TrainConfig(threads=1)


def test_the_reference_as_a_backend_passes_every_check_on_a_batch_norm_resnet(reference_backends):
    result = check_backend(reference_backends.ReferenceBackend(), TINY_RESNET, CONFIG)
    assert result["status"] == "PASS", result["message"]
    names = set(result["checks"])
    assert {"adam: bn/moving_variance after each step", "sgd: s2b1_proj_bn/moving_mean after each step"} <= names
    assert "gradient s2b1_proj_bn/gamma" in names


@pytest.mark.parametrize(
    ("bug", "failing"),
    [
        ("bn-momentum", "moving_mean after each step"),
        ("bn-unbiased", "moving_variance after each step"),
        ("bn-batch-stats-in-inference", "logits"),
    ],
)
def test_each_batch_norm_porting_bug_fails_the_check_that_names_it(reference_backends, bug, failing):
    result = check_backend(reference_backends.ReferenceBackend(bug, bug), TINY_RESNET, CONFIG)
    assert result["status"] == "FAIL"
    failed = [name for name, check in result["checks"].items() if not check["passed"]]
    assert any(failing in name for name in failed), failed


def test_the_kit_runs_its_checks_on_a_registered_model(reference_backends):
    from cnnbench.testing import (
        BackendConformance,
        ConformanceKit,
        check_evaluate,
        check_loss_and_gradients,
        check_parameter_count,
        model_spec,
    )

    assert BackendConformance.kit_models == ("mnist", "cifar")
    spec = model_spec("tiny-resnet:cifar")
    assert (spec.name, spec.input_shape, spec.has_batch_norm) == ("tiny-resnet", (32, 32, 3), True)
    with pytest.raises(KeyError, match="NAME:mnist"):
        model_spec("tiny-resnet:imagenet")
    with ConformanceKit(reference_backends.ReferenceBackend(), None, {}, threads=1) as kit:
        trial = kit.trial("tiny-resnet:cifar")
        check_parameter_count(trial.spec, trial.weights())
        check_loss_and_gradients(trial)
        check_evaluate(trial)
