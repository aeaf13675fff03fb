"""Backbones: conv2d against a NumPy float64 convolution (padding (1, 1) also for stride 2), the
'xla' and 'im2col' lowerings agree in values and gradients (also vmapped over per-task weights),
Conv-4 shapes and learn2learn's initialisation, ResNet-12 against a NumPy forward pass."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.models.conv4 import Conv4
from smallsample.models.layers import conv2d, max_pool2
from smallsample.models.resnet12 import ResNet12


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("impl", ["xla", "im2col"])
@pytest.mark.parametrize("size,stride", [(8, 2), (7, 2), (6, 1)])
def test_conv2d_equals_numpy_with_symmetric_padding(impl, size, stride, np_ref):
    rng = np.random.default_rng(size)
    x, k = rng.normal(size=(2, size, size, 3)), rng.normal(size=(3, 3, 3, 4))
    out = jax.jit(lambda x, k: conv2d(x, k, stride=stride, padding=1, impl=impl))(x, k)
    np.testing.assert_allclose(out, np_ref.conv(x, k, stride, 1), rtol=1e-12, atol=1e-12)
    if (size, stride) == (8, 2):  # flax's 'SAME' pads (0, 1) here: a different result
        same = jax.lax.conv_general_dilated(x, k, (2, 2), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        assert same.shape == out.shape and not np.allclose(same, out)


def test_conv2d_lowerings_agree_in_gradients_also_vmapped_over_task_weights():
    rng = np.random.default_rng(0)
    xs, ks = rng.normal(size=(3, 2, 6, 6, 2)), rng.normal(size=(3, 3, 3, 2, 4))
    cot = rng.normal(size=(2, 3, 3, 4))

    def grads(impl):
        loss = lambda x, k: jnp.sum(conv2d(x, k, stride=2, impl=impl) * cot)
        one = jax.grad(loss, argnums=(0, 1))
        return jax.jit(lambda x, k: (one(x[0], k[0]), jax.vmap(one)(x, k)))(xs, ks)

    chex.assert_trees_all_close(grads("xla"), grads("im2col"), rtol=1e-12, atol=1e-12)


def shapes(model, x_shape):
    x = jax.ShapeDtypeStruct(x_shape, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.key(0), x)
    return params, jax.eval_shape(model.apply, params, x).shape


@pytest.mark.parametrize("size", [6, 7])
def test_max_pool2_values_and_derivatives_equal_numpy(size, np_ref):
    """Floor-mode values; reverse and forward mode send each window's derivative to its first
    maximum (NumPy reference); second order through it by finite differences."""
    rng = np.random.default_rng(size)
    x, w = rng.normal(size=(2, size, size, 3)), rng.normal(size=(2, size // 2, size // 2, 3))
    np.testing.assert_array_equal(jax.jit(max_pool2)(x), np_ref.pool(x))
    ref = np.zeros_like(x)  # d/dx sum(w * pool(x))
    for n, i, j, c in np.ndindex(w.shape):
        win = x[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c]
        a, b = np.unravel_index(np.argmax(win), (2, 2))
        ref[n, 2 * i + a, 2 * j + b, c] = w[n, i, j, c]
    grad = jax.jit(jax.grad(lambda x: jnp.sum(w * max_pool2(x))))(x)
    np.testing.assert_allclose(grad, ref, rtol=1e-12, atol=0)
    t = rng.normal(size=x.shape)
    _, tangent = jax.jvp(max_pool2, (x,), (t,))
    np.testing.assert_allclose(np.sum(w * tangent), np.sum(ref * t), rtol=1e-12)
    # ties (ReLU zeros): the whole derivative goes to the first entry of the window
    zeros = jax.grad(lambda x: jnp.sum(max_pool2(x)))(jnp.zeros((1, 2, 2, 1)))
    np.testing.assert_array_equal(zeros[0, :, :, 0], [[1, 0], [0, 0]])
    jax.test_util.check_grads(lambda x: jnp.sum(jnp.sin(max_pool2(x)) * w), (x,), order=2,
                              modes=("fwd", "rev"), eps=1e-6)


def test_max_pool2_jit_gradient_equals_reduce_window():
    """A Conv-4 prototypical-network gradient under ``jit`` (im2col convolution) equals the eager
    gradient with ``lax.reduce_window`` max-pooling. An ``x == max(x)`` derivative fails this
    (relative error 1.5 on jax 0.10.2, CPU): XLA recomputes ``x`` with other rounding."""
    import flax.linen as nn

    import smallsample.models.conv4 as conv4
    from smallsample.learners.protonet import protonet

    rng = np.random.default_rng(0)
    sx, qx = rng.random((5, 28, 28, 1)), rng.random((10, 28, 28, 1))
    sy, qy = jnp.arange(5), jnp.tile(jnp.arange(5), 2)
    learner = protonet(Conv4(width=32, conv_impl="im2col"), 5)
    params = learner.init(jax.random.key(1), sx)

    def loss(p):
        logits = learner.predict(p, learner.adapt(p, sx, sy, None), qx)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), qy[:, None], 1))

    got = jax.jit(jax.grad(loss))(params)
    original = conv4.max_pool2
    try:
        conv4.max_pool2 = lambda x: nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        ref = jax.grad(loss)(params)
    finally:
        conv4.max_pool2 = original
    for path, g in jax.tree_util.tree_leaves_with_path(got):
        name = jax.tree_util.keystr(path)
        r = ref
        for k in path:
            r = r[k.key]
        np.testing.assert_allclose(g, r, rtol=1e-9, atol=1e-12 * np.abs(r).max(), err_msg=name)


@pytest.mark.parametrize("model,x_shape,out", [
    (Conv4(downsample="stride"), (5, 28, 28, 1), (5, 64)),        # 28-14-7-4-2, spatial mean
    (Conv4(downsample="pool"), (5, 28, 28, 1), (5, 64)),          # 28-14-7-3-1
    (Conv4(downsample="pool"), (5, 84, 84, 3), (5, 1600)),        # 84-42-21-10-5, 5*5*64
    (Conv4(width=32, downsample="pool", num_classes=5), (5, 84, 84, 3), (5, 5)),
    (Conv4(downsample="stride", num_classes=20), (5, 28, 28, 1), (5, 20)),
    (ResNet12(), (2, 84, 84, 3), (2, 16000)),                     # MetaOptNet: 5*5*640
    (ResNet12(pool="avg", num_classes=5), (2, 84, 84, 3), (2, 5)),
    (ResNet12(widths=(8, 8, 16, 16)), (2, 32, 32, 3), (2, 64)),
])
def test_output_shapes(model, x_shape, out):
    assert shapes(model, x_shape)[1] == out


def test_resnet12_has_metaoptnets_parameter_count():
    params, _ = shapes(ResNet12(), (2, 84, 84, 3))
    # per block: 3x3 convs cin->w, w->w, w->w (no bias), 1x1 shortcut, 4 BatchNorms (scale, bias)
    widths, cin, total = (64, 160, 320, 640), 3, 0
    for w in widths:
        total += 9 * cin * w + 2 * 9 * w * w + cin * w + 4 * 2 * w
        cin = w
    assert sum(p.size for p in jax.tree.leaves(params)) == total == 12_424_320


def test_conv4_initialisation_follows_learn2learn():
    model = Conv4(downsample="stride", num_classes=5, bn_scale_init="uniform", blocks=2)
    # an 'rbg' key: the same distributions, and its sampler compiles faster than threefry's
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), jnp.zeros((2, 4, 4, 1)))["params"]
    kernel = np.asarray(params["Conv_1"]["kernel"])  # 3x3x64x64, Xavier uniform
    bound = np.sqrt(6 / (9 * 64 + 9 * 64))
    assert np.abs(kernel).max() <= bound and np.abs(kernel).max() > 0.98 * bound
    np.testing.assert_allclose(kernel.var(), bound ** 2 / 3, rtol=0.05)
    scales = np.concatenate([np.asarray(params[f"BatchStatNorm_{i}"]["scale"]) for i in range(2)])
    assert scales.min() >= 0 and scales.max() < 1 and abs(scales.mean() - 0.5) < 0.08
    head = np.asarray(params["head"]["kernel"])  # N(0, 1), zero bias
    assert abs(head.std() - 1) < 0.15 and abs(head.mean()) < 0.2
    np.testing.assert_array_equal(params["head"]["bias"], 0)


def test_conv4_lowerings_agree_in_values_and_gradients():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(4, 8, 8, 1)), rng.normal(size=(4, 3))
    models = {impl: Conv4(width=3, blocks=2, downsample="stride", num_classes=3, conv_impl=impl)
              for impl in ("xla", "im2col")}
    structure, _ = shapes(models["xla"], x.shape)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape), structure["params"])

    def value_and_grad(impl):
        loss = lambda p: jnp.sum(models[impl].apply({"params": p}, x) * y)
        return jax.jit(jax.value_and_grad(loss))(params)

    (va, ga), (vb, gb) = value_and_grad("xla"), value_and_grad("im2col")
    np.testing.assert_allclose(va, vb, rtol=1e-12)
    for name in ga:
        for leaf in ga[name]:
            np.testing.assert_allclose(ga[name][leaf], gb[name][leaf], rtol=1e-10,
                                       atol=1e-12, err_msg=f"{name}/{leaf}")


@pytest.mark.parametrize("downsample", ["stride", "pool"])
def test_conv4_conv_bias_is_cancelled_by_batch_norm(downsample):
    """``conv_bias=True`` (learn2learn's parameter tree) and the default computes the same
    function for any biases: the batch-statistics BatchNorm after each convolution subtracts
    them. Same values and same gradients of every shared parameter (float64), with the
    statistics of the batch and with statistics carried from another batch (``norm_stats``);
    the biases' own gradient is zero."""
    rng = np.random.default_rng(3)
    x, x2 = rng.normal(size=(4, 8, 8, 1)), rng.normal(size=(3, 8, 8, 1))
    y = rng.normal(size=(4, 3))
    kw = dict(width=3, blocks=2, downsample=downsample, num_classes=3, conv_impl="im2col")
    with_bias, without = Conv4(conv_bias=True, **kw), Conv4(**kw)
    structure, _ = shapes(with_bias, x.shape)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape), structure["params"])
    assert params["Conv_0"]["bias"].shape == (3,) and np.abs(params["Conv_1"]["bias"]).min() > 0
    plain = {k: {n: v for n, v in p.items() if not (k.startswith("Conv") and n == "bias")}
             for k, p in params.items()}
    assert set(shapes(without, x.shape)[0]["params"]["Conv_0"]) == {"kernel"}

    def loss(model, p):
        _, stats = model.apply({"params": p}, x2, mutable=["norm_stats"])  # another batch's
        own = model.apply({"params": p}, x)
        carried = model.apply({"params": p, **stats}, x)
        return jnp.sum(own * y) + jnp.sum(jnp.tanh(carried) * y)

    va, ga = jax.jit(jax.value_and_grad(lambda p: loss(with_bias, p)))(params)
    vb, gb = jax.jit(jax.value_and_grad(lambda p: loss(without, p)))(plain)
    np.testing.assert_allclose(va, vb, rtol=1e-12)
    for name in gb:
        for leaf in gb[name]:
            np.testing.assert_allclose(ga[name][leaf], gb[name][leaf], rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name}/{leaf}")
    for i in range(2):
        np.testing.assert_allclose(ga[f"Conv_{i}"]["bias"], 0, atol=1e-10)


def np_resnet12(params, x, ref):
    leaky = lambda v: np.where(v > 0, v, 0.1 * v)
    for i in range(1, 5):
        p = jax.tree.map(np.asarray, params[f"block{i}"])
        bn = lambda v, name, p=p: ref.bn(v, p[name]["scale"], p[name]["bias"])
        y = leaky(bn(ref.conv(x, p["conv1"]["kernel"], 1, 1), "bn1"))
        y = leaky(bn(ref.conv(y, p["conv2"]["kernel"], 1, 1), "bn2"))
        y = bn(ref.conv(y, p["conv3"]["kernel"], 1, 1), "bn3")
        short = bn(ref.conv(x, p["shortcut_conv"]["kernel"], 1, 0), "shortcut_bn")
        x = ref.pool(leaky(y + short))
    return x.reshape(x.shape[0], -1)


def test_resnet12_equals_a_numpy_forward_pass(np_ref):
    # im2col here; conv2d's two lowerings are compared above. Parameters are drawn in NumPy on
    # the structure from eval_shape (compiling the initialiser is slow on a shared CPU), with
    # BatchNorm's scale and shift away from 1 and 0.
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 18, 18, 2))  # 18-9-4-2-1
    model = ResNet12(widths=(2, 3, 3, 4), conv_impl="im2col")
    structure, _ = shapes(model, x.shape)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape), structure["params"])
    out = jax.jit(model.apply)({"params": params}, x)
    np.testing.assert_allclose(out, np_resnet12(params, x, np_ref), rtol=1e-10, atol=1e-12)


def test_models_reject_bad_inputs():
    with pytest.raises(ValueError, match=r"\(28, 28\)"):
        shapes(ResNet12(), (28, 28))
    with pytest.raises(ValueError, match="too small"):
        shapes(ResNet12(), (2, 8, 8, 3))
    with pytest.raises(ValueError, match="kernel"):
        conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 3, 1)))


@pytest.mark.parametrize("offset", [0.0, 1e4])
def test_batch_stat_norm_equals_float64_numpy_with_large_means(offset):
    """BatchStatNorm's one-pass moments (shifted by a sample of each channel) against the
    two-pass float64 formula: values, and gradients of x, scale and bias. A channel mean 1e4
    times its spread would lose every digit of the variance to cancellation without the shift."""
    from smallsample.models.layers import BatchStatNorm, batch_moments

    rng = np.random.default_rng(3)
    x64 = rng.standard_normal((6, 5, 4, 3)) * np.array([1.0, 0.1, 3.0]) + offset
    x64[..., 2] = offset  # a constant channel: variance 0, output = bias
    x64 = x64.astype(np.float32).astype(np.float64)  # the float32 input, exactly
    mean, var = (np.asarray(a) for a in batch_moments(jnp.asarray(x64, jnp.float32)))
    # float32 resolves a mean of 1e4 to about 1e-3: the tolerances of the mean and the output
    # grow with the offset; the variance's does not (without the shift its error would be ~1)
    np.testing.assert_allclose(mean, x64.mean((0, 1, 2)), atol=1e-6 + offset * 2e-7)
    np.testing.assert_allclose(var, x64.var((0, 1, 2)), rtol=1e-3, atol=1e-6)
    assert var[2] == 0.0

    scale, bias = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    w = rng.standard_normal(x64.shape)

    def reference(x, scale, bias):  # float64, two passes
        m = x.mean((0, 1, 2))
        return (x - m) / np.sqrt(((x - m) ** 2).mean((0, 1, 2)) + 1e-5) * scale + bias

    params = {"scale": jnp.asarray(scale, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    y = BatchStatNorm().apply({"params": params}, jnp.asarray(x64, jnp.float32))
    np.testing.assert_allclose(np.asarray(y), reference(x64, scale, bias),
                               atol=2e-4 + offset * 2e-6)

    with jax.enable_x64(True):
        loss = lambda x, p: jnp.sum(jnp.sin(BatchStatNorm().apply({"params": p}, x)) * w)
        p64 = {"scale": jnp.asarray(scale), "bias": jnp.asarray(bias)}
        gx, gp = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x64), p64)
        ref = lambda x, s, b: jnp.sum(jnp.sin(
            (x - x.mean((0, 1, 2))) * jax.lax.rsqrt(x.var((0, 1, 2)) + 1e-5) * s + b) * w)
        rx, rs, rb = jax.grad(ref, argnums=(0, 1, 2))(jnp.asarray(x64), p64["scale"],
                                                      p64["bias"])
    np.testing.assert_allclose(np.asarray(gx), np.asarray(rx), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.asarray(gp["scale"]), np.asarray(rs), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(gp["bias"]), np.asarray(rb), rtol=1e-8)


def test_batch_stat_norm_segments_equal_each_segment_alone():
    """A batch of three concatenated batches normalised in segments (float64): the values and
    gradients of applying the layer to each alone, through a spatial Conv-4 block too."""
    from smallsample.models.conv4 import Conv4
    from smallsample.models.layers import BatchStatNorm, segmented_batch_stats

    rng = np.random.default_rng(4)
    sizes = (2, 5, 3)
    with jax.enable_x64(True):
        x = jnp.asarray(rng.standard_normal((10, 6, 6, 3)) * 2 + 1)
        parts = jnp.split(x, [2, 7])
        p = {"scale": jnp.asarray(rng.uniform(0.5, 1.5, 3)),
             "bias": jnp.asarray(rng.normal(size=3))}
        norm = BatchStatNorm()
        y = norm.apply({"params": p}, x, segments=sizes)
        alone = jnp.concatenate([norm.apply({"params": p}, part) for part in parts])
        np.testing.assert_allclose(y, alone, rtol=1e-13, atol=1e-13)
        w = jnp.asarray(rng.standard_normal(x.shape))
        g = jax.grad(lambda x, p: jnp.sum(jnp.sin(norm.apply({"params": p}, x, segments=sizes))
                                          * w), argnums=(0, 1))(x, p)
        g_alone = jax.grad(lambda x, p: jnp.sum(jnp.sin(jnp.concatenate(
            [norm.apply({"params": p}, part) for part in jnp.split(x, [2, 7])])) * w),
            argnums=(0, 1))(x, p)
        for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_alone), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-13)

        model = Conv4(width=4, blocks=2, conv_impl="im2col")
        params = model.init(jax.random.key(0), x)["params"]
        with segmented_batch_stats(sizes):
            z = model.apply({"params": params}, x)
        z_alone = jnp.concatenate([model.apply({"params": params}, part) for part in parts])
        np.testing.assert_allclose(z, z_alone, rtol=1e-12, atol=1e-12)
        # without segments the whole batch's statistics give other numbers
        assert not np.allclose(model.apply({"params": params}, x), z_alone, atol=1e-6)

        with pytest.raises(ValueError, match=r"segments \(2, 5\) do not split a batch of 10"):
            norm.apply({"params": p}, x, segments=(2, 5))
        with pytest.raises(ValueError, match="norm_stats"):
            norm.apply({"params": p}, x, segments=sizes, mutable=["norm_stats"])
