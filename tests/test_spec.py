import pytest

from cnnbench.spec import CIFAR_LENET, MNIST_LENET, Conv2D, Dense, Dropout, MaxPool2D, lenet, spec_for


def test_mnist_variant_parameter_count_and_shapes():
    assert MNIST_LENET.num_params == 3_255_914
    shapes = [info.output_shape for info in MNIST_LENET.layer_infos()]
    assert shapes == [(28, 28, 32), (14, 14, 32), (14, 14, 64), (7, 7, 64), (3136,), (1024,), (10,)]
    assert not MNIST_LENET.has_dropout


def test_cifar_variant_has_dropout_after_each_pool_and_dense1024():
    assert CIFAR_LENET.num_params == 4_239_978
    kinds = [type(layer).__name__ for layer in CIFAR_LENET.layers]
    assert kinds == [
        "Conv2D",
        "MaxPool2D",
        "Dropout",
        "Conv2D",
        "MaxPool2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dropout",
        "Dense",
    ]
    assert CIFAR_LENET.layer_infos()[6].output_shape == (4096,)
    assert all(layer.rate == 0.2 for layer in CIFAR_LENET.layers if isinstance(layer, Dropout))


def test_flops_per_training_sample_match_the_hand_count():
    # conv1 28*28*32*16 + conv2 14*14*64*512 + dense 3136*1024 + 1024*10 MACs, 2 FLOPs each, x3 for training
    macs = 28 * 28 * 32 * 16 + 14 * 14 * 64 * 512 + 3136 * 1024 + 1024 * 10
    assert MNIST_LENET.flops_forward == 2 * macs
    assert MNIST_LENET.flops_train == 6 * macs
    assert round(MNIST_LENET.flops_train / 1e6, 2) == 60.27


def test_param_shapes_are_canonical_and_sum_to_the_count():
    shapes = MNIST_LENET.param_shapes()
    assert shapes["conv1/kernel"] == (4, 4, 1, 32)
    assert shapes["conv2/kernel"] == (4, 4, 32, 64)
    assert shapes["dense1/kernel"] == (3136, 1024)
    assert shapes["dense2/bias"] == (10,)
    assert sum(int(__import__("math").prod(s)) for s in shapes.values()) == MNIST_LENET.num_params


def test_spec_for_picks_the_variant_from_the_input_and_allows_overrides():
    assert spec_for((28, 28, 1), 10) == MNIST_LENET
    assert spec_for((32, 32, 3), 10) == CIFAR_LENET
    assert not spec_for((32, 32, 3), 10, dropout=0).has_dropout
    assert spec_for((28, 28, 1), 10, dropout=0.5).has_dropout


def test_same_and_valid_padding_arithmetic():
    spec = lenet((31, 29, 1))
    assert spec.layer_infos()[0].output_shape == (31, 29, 32)  # SAME keeps size at stride 1
    assert spec.layer_infos()[1].output_shape == (15, 14, 32)  # VALID 2/2 floors
    with pytest.raises(ValueError, match="unknown padding 'FULL'"):
        type(spec)("x", (8, 8, 1), 10, (Conv2D("c", 4, 3, padding="FULL"),)).layer_infos()


def test_summary_rows_cover_every_layer():
    rows = MNIST_LENET.summary_rows()
    assert rows[0] == ("conv1", "Conv2D", "28x28x32", 544)
    assert [r[0] for r in rows] == [layer.name for layer in MNIST_LENET.layers]
    assert isinstance(MNIST_LENET.layers[1], MaxPool2D) and isinstance(MNIST_LENET.layers[-1], Dense)
