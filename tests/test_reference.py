"""The float64 reference itself: conventions, gradients, near-tie allowances and optimizers."""

from __future__ import annotations

import numpy as np
import pytest

from cnnbench import reference as ref
from cnnbench.initializers import initial_weights
from cnnbench.spec import Conv2D, Dense, Flatten, MaxPool2D, ModelSpec, lenet

SMALL = lenet((8, 8, 1))


def _random_weights(spec: ModelSpec, seed: int) -> dict[str, np.ndarray]:
    """Glorot kernels and non-zero biases, in float64 (a bias of 0 would hide bias bugs)."""
    rng = np.random.default_rng(seed + 1)
    weights = {name: value.astype(np.float64) for name, value in initial_weights(spec, "glorot-uniform", seed).items()}
    for name in weights:
        if name.endswith("/bias"):
            weights[name] = rng.normal(0.0, 0.1, size=weights[name].shape)
    return weights


def _direct_conv(x, kernel, bias, stride, pads):
    """A convolution as four nested loops over an explicitly padded input: nothing shared with im2col."""
    (top, bottom), (left, right) = pads
    padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    k = kernel.shape[0]
    out_h, out_w = (padded.shape[1] - k) // stride + 1, (padded.shape[2] - k) // stride + 1
    out = np.zeros((x.shape[0], out_h, out_w, kernel.shape[3]))
    for n in range(x.shape[0]):
        for i in range(out_h):
            for j in range(out_w):
                patch = padded[n, i * stride : i * stride + k, j * stride : j * stride + k, :]
                out[n, i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
    return out


def test_same_padding_is_tensorflows_one_before_two_after_for_kernel_4():
    assert ref.same_padding(28, 4, 1) == (1, 2)
    assert ref.same_padding(28, 4, 1, extra="before") == (2, 1)
    assert ref.same_padding(7, 3, 2) == (1, 1)  # output 4 needs 2 in total
    assert ref.same_padding(8, 2, 2) == (0, 0)


@pytest.mark.parametrize(("padding", "stride"), [("SAME", 1), ("VALID", 1), ("SAME", 2)])
def test_convolution_matches_direct_loops(padding, stride):
    rng = np.random.default_rng(3)
    x, kernel, bias = rng.normal(size=(2, 7, 6, 3)), rng.normal(size=(4, 4, 3, 5)), rng.normal(size=5)
    layer = Conv2D("conv", filters=5, kernel_size=4, stride=stride, padding=padding, activation=None)
    got, _ = ref._conv_forward(layer, kernel, bias, x, ref.CANONICAL)
    pads = (ref.same_padding(7, 4, stride), ref.same_padding(6, 4, stride)) if padding == "SAME" else ((0, 0), (0, 0))
    np.testing.assert_allclose(got, _direct_conv(x, kernel, bias, stride, pads), rtol=1e-12, atol=1e-12)


def test_forward_shapes_follow_the_spec():
    for spec in (lenet((28, 28, 1)), lenet((32, 32, 3), dropout=0.2)):
        tape: list = []
        logits = ref.forward(
            spec, initial_weights(spec, "glorot-uniform", 0), np.zeros((2, *spec.input_shape)), tape=tape
        )
        infos = [info for info in spec.layer_infos() if type(info.layer).__name__ != "Dropout"]
        assert len(tape) == len(infos)
        for (layer, cache), info in zip(tape, infos, strict=False):
            assert layer is info.layer
            if "z" in cache:
                assert cache["z"].shape[1:] == info.output_shape
        assert logits.shape == (2, spec.num_classes)


def test_max_pool_gradient_goes_to_the_first_maximum():
    layer = MaxPool2D("pool")
    x = np.array([[1.0, 3.0], [3.0, 2.0]]).reshape(1, 2, 2, 1)
    out, cache = ref._pool_forward(layer, x, ref.CANONICAL)
    assert out.item() == 3.0
    grad = ref._pool_backward(layer, cache, np.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(grad.reshape(2, 2), [[0.0, 1.0], [0.0, 0.0]])


def test_flatten_conventions_are_a_permutation_of_dense1_rows():
    """CHW flatten with the kernel's rows permuted from HWC gives the canonical logits exactly."""
    spec = SMALL
    weights = _random_weights(spec, 0)
    x = np.random.default_rng(0).random((3, *spec.input_shape))
    h, w, c = 2, 2, 64  # after two 2x2 pools of 8x8, 64 filters
    hwc_index = np.arange(h * w * c).reshape(h, w, c)
    permuted = dict(weights, **{"dense1/kernel": weights["dense1/kernel"][hwc_index.transpose(2, 0, 1).ravel()]})
    np.testing.assert_allclose(
        ref.forward(spec, permuted, x, ref.Conventions(flatten="CHW")), ref.forward(spec, weights, x), rtol=1e-12
    )
    assert not np.allclose(ref.forward(spec, weights, x, ref.Conventions(flatten="CHW")), ref.forward(spec, weights, x))


def test_gradients_match_finite_differences():
    spec = SMALL
    weights = _random_weights(spec, 1)
    rng = np.random.default_rng(1)
    x, y = rng.random((4, *spec.input_shape)), rng.integers(0, 10, 4)
    loss, grads, _logits = ref.loss_and_gradients(spec, weights, x, y)
    assert loss == pytest.approx(ref.softmax_cross_entropy(ref.forward(spec, weights, x), y)[0], rel=1e-14)
    eps = 1e-6

    def loss_at(w):
        return ref.softmax_cross_entropy(ref.forward(spec, w, x), y)[0]

    for name, grad in grads.items():
        assert grad.shape == spec.param_shapes()[name]
        direction = rng.normal(size=grad.shape)
        numeric = (
            loss_at({**weights, name: weights[name] + eps * direction})
            - loss_at({**weights, name: weights[name] - eps * direction})
        ) / (2 * eps)
        assert numeric == pytest.approx(float((grad * direction).sum()), rel=1e-6, abs=1e-10), name
        for index in list(zip(*np.unravel_index(rng.choice(grad.size, 3, replace=False), grad.shape), strict=False)):
            bumped = weights[name].copy()
            bumped[index] += eps
            lowered = weights[name].copy()
            lowered[index] -= eps
            numeric = (loss_at({**weights, name: bumped}) - loss_at({**weights, name: lowered})) / (2 * eps)
            assert numeric == pytest.approx(grad[index], rel=1e-5, abs=1e-9), (name, index)


def test_reference_matches_pytorch_in_float64():
    """An independent implementation (PyTorch, float64, TF-style padding for even kernels) agrees to rounding."""
    torch = pytest.importorskip("torch")
    from cnnbench_torch.backend import build_module, from_native, to_native

    spec = lenet((32, 32, 3), dropout=0.2)
    weights = _random_weights(spec, 2)
    rng = np.random.default_rng(2)
    x, y = rng.random((3, *spec.input_shape)), rng.integers(0, 10, 3)
    model, weighted = build_module(spec)
    model = model.double().eval()
    with torch.no_grad():
        for layer, module in weighted.items():
            module.weight.copy_(torch.from_numpy(to_native(f"{layer}/kernel", weights[f"{layer}/kernel"])))
            module.bias.copy_(torch.from_numpy(weights[f"{layer}/bias"]))
    logits = model(torch.from_numpy(x).permute(0, 3, 1, 2))
    torch.nn.functional.cross_entropy(logits, torch.from_numpy(y)).backward()
    _loss, grads, expected_logits = ref.loss_and_gradients(spec, weights, x, y)
    np.testing.assert_allclose(logits.detach().numpy(), expected_logits, rtol=1e-12, atol=1e-13)
    for layer, module in weighted.items():
        np.testing.assert_allclose(
            from_native(f"{layer}/kernel", module.weight.grad.numpy()), grads[f"{layer}/kernel"], rtol=1e-10, atol=1e-14
        )
        np.testing.assert_allclose(module.bias.grad.numpy(), grads[f"{layer}/bias"], rtol=1e-10, atol=1e-14)


# --- near-tie allowances ---------------------------------------------------------------------

#: One 2x2 convolution (only its top-left tap non-zero, so z = x), a pool, a dense layer: inputs set activations.
TINY = ModelSpec(
    "tiny",
    (4, 4, 1),
    2,
    (
        Conv2D("conv1", filters=1, kernel_size=2, activation="relu"),
        MaxPool2D("pool1"),
        Flatten(),
        Dense("dense1", units=2, activation=None),
    ),
)


def _tiny_weights():
    kernel = np.zeros((2, 2, 1, 1))
    kernel[0, 0, 0, 0] = 1.0
    dense = np.array([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.2], [0.25, 0.15]])
    return {"conv1/kernel": kernel, "conv1/bias": np.zeros(1), "dense1/kernel": dense, "dense1/bias": np.zeros(2)}


def _tiny_input():
    """Window (0, 0) ties at 0.7 (top-left chosen); window (0, 1) is all dead with z exactly 0 at its top-left."""
    image = np.array(
        [
            [0.7, 0.7, 0.0, -0.3],
            [0.1, 0.2, -0.2, -0.4],
            [0.9, 0.15, 0.35, 0.6],
            [0.05, 0.45, 0.8, 0.55],
        ]
    )
    return image.reshape(1, 4, 4, 1)


@pytest.mark.parametrize(
    ("nudge", "what"), [((0, 1), "pool tie resolved to the other element"), ((0, 2), "ReLU kink at 0 resolved to pass")]
)
def test_near_tie_allowance_covers_the_other_side_of_a_tie(nudge, what):
    weights, x, y = _tiny_weights(), _tiny_input(), np.array([1])
    _, grads, _, allowance, count = ref.gradients_and_kinks(TINY, weights, x, y, rel=1e-6)
    assert count == 2  # the tie and the kink, nothing else
    nudged = x.copy()
    nudged[(0, *nudge, 0)] += 1e-9  # below float32 resolution: either gradient is right
    _, other, _ = ref.loss_and_gradients(TINY, weights, nudged, y)
    change = np.abs(other["conv1/kernel"] - grads["conv1/kernel"])
    assert change.max() > 1e-3, f"the nudge must change the gradient ({what})"
    for name in grads:
        assert np.all(np.abs(other[name] - grads[name]) <= allowance[name] + 1e-7), (name, what)


def test_no_allowance_away_from_ties():
    x = _tiny_input()
    x[0, 0, 1, 0], x[0, 0, 2, 0] = 0.6, -0.1  # break the tie and move the kink away
    _, _, _, allowance, count = ref.gradients_and_kinks(TINY, _tiny_weights(), x, np.array([1]), rel=1e-6)
    assert count == 0 and all(not value.any() for value in allowance.values())


# --- optimizers --------------------------------------------------------------------------------


def test_sgd_step():
    w, g = {"a": np.array([1.0, -2.0])}, {"a": np.array([0.5, 0.25])}
    np.testing.assert_allclose(ref.SGD(0.1).step(w, g)["a"], [0.95, -2.025])


def test_adam_first_step_moves_by_lr_times_sign():
    g = {"a": np.array([3.0, -1e-3, 1e-12])}
    new = ref.Adam(0.01).step({"a": np.zeros(3)}, g)["a"]
    np.testing.assert_allclose(new, -0.01 * g["a"] / (np.abs(g["a"]) + ref.ADAM_EPSILON), rtol=1e-12)
    assert new[0] == pytest.approx(-0.01) and abs(new[2]) < 1e-5  # epsilon dominates a tiny gradient


def test_adam_matches_torch_optim_adam():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    start = rng.normal(size=5)
    param = torch.nn.Parameter(torch.from_numpy(start.copy()))
    optimizer = torch.optim.Adam([param], lr=0.01, betas=(ref.ADAM_BETA1, ref.ADAM_BETA2), eps=ref.ADAM_EPSILON)
    adam, w = ref.Adam(0.01), {"p": start}
    for _ in range(4):
        g = rng.normal(size=5) * rng.choice([1e-6, 1.0, 100.0], size=5)
        param.grad = torch.from_numpy(g.copy())
        optimizer.step()
        w = adam.step(w, {"p": g})
    np.testing.assert_allclose(param.detach().numpy(), w["p"], rtol=1e-12, atol=1e-15)


def test_adam_update_bound_is_tight_and_never_exceeded():
    assert ref.adam_update_bound(1) == pytest.approx(1.0)
    b1, b2 = ref.ADAM_BETA1, ref.ADAM_BETA2
    rng = np.random.default_rng(5)
    for t in (2, 3, 10):
        bound = ref.adam_update_bound(t)
        # Cauchy-Schwarz is an equality for |g_j| proportional to (1-b1) b1^(t-j) / ((1-b2) b2^(t-j)).
        worst = [(1 - b1) * b1 ** (t - j) / ((1 - b2) * b2 ** (t - j)) for j in range(1, t + 1)]
        for history in [worst] + [list(rng.normal(size=t) * 10 ** rng.uniform(-6, 2, size=t)) for _ in range(50)]:
            adam, w = ref.Adam(1.0), {"p": np.zeros(1)}
            for g in history:
                previous = w["p"].copy()
                w = adam.step(w, {"p": np.array([g])})
            assert abs(w["p"] - previous).item() <= bound * (1 + 1e-12)
        adam, w = ref.Adam(1.0), {"p": np.zeros(1)}
        for g in worst:
            previous = w["p"].copy()
            w = adam.step(w, {"p": np.array([g])})
        assert abs(w["p"] - previous).item() == pytest.approx(bound, rel=1e-3)  # epsilon makes it a hair smaller


def test_adam_hat_form_is_keras_and_tensorflows_update():
    """Keras: lr_t = lr sqrt(1 - b2^t) / (1 - b1^t); w -= lr_t m / (sqrt(v) + eps), written out step by step."""
    rng = np.random.default_rng(6)
    b1, b2, eps, lr = ref.ADAM_BETA1, ref.ADAM_BETA2, ref.ADAM_EPSILON, 0.01
    adam, w = ref.Adam(lr, epsilon_form="hat"), {"p": rng.normal(size=6)}
    keras, m, v = w["p"].copy(), np.zeros(6), np.zeros(6)
    for t in range(1, 5):
        g = rng.normal(size=6) * rng.choice([1e-9, 1e-7, 1.0], size=6)
        w = adam.step(w, {"p": g})
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        keras = keras - lr * np.sqrt(1 - b2**t) / (1 - b1**t) * m / (np.sqrt(v) + eps)
        assert adam.effective_epsilon() == pytest.approx(eps / np.sqrt(1 - b2**t))
        np.testing.assert_allclose(w["p"], keras, rtol=1e-12, atol=1e-15)
    assert ref.Adam(lr).effective_epsilon(1) == eps
    with pytest.raises(ValueError, match="epsilon form"):
        ref.Adam(lr, epsilon_form="inside-sqrt")
