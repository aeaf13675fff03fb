"""MAML family: inner steps against hand-written SGD, meta-gradients against finite
differences (float64), iMAML against its closed form on a quadratic, Reptile's convention, one
trace per meta-step."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.episodes import Episode
from smallsample.learners.base import episode_loss, task_loss_and_grad
from smallsample.learners.maml import (
    conjugate_gradient,
    cross_entropy,
    imaml,
    implicit_meta_grad,
    maml,
    reptile,
)
from smallsample.models.conv4 import Conv4


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class Linear(nn.Module):
    ways: int = 2

    @nn.compact
    def __call__(self, x):
        return nn.Dense(self.ways, name="head")(x.reshape((x.shape[0], -1)))


class TinyMLP(nn.Module):
    ways: int = 2
    hidden: int = 3

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Dense(self.hidden)(x.reshape((x.shape[0], -1))))
        return nn.Dense(self.ways, name="head")(x)


def f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def episode(seed, *, ways=2, shots=1, queries=2, shape=(4,)):
    rng = np.random.default_rng(seed)
    return Episode(
        support_x=jnp.asarray(rng.normal(size=(ways * shots, *shape))),
        support_y=jnp.asarray(np.repeat(np.arange(ways), shots)),
        query_x=jnp.asarray(rng.normal(size=(ways * queries, *shape))),
        query_y=jnp.asarray(np.repeat(np.arange(ways), queries)))


def init(learner, ep, seed=0):
    """float64 parameters drawn in NumPy on the structure of ``learner.init`` (compiling the
    initialiser costs more than the tests); Meta-SGD rates near 0.5."""
    structure = jax.eval_shape(learner.init, jax.random.key(0), ep.support_x)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        if any(getattr(k, "key", None) == "inner_lr" for k in path):
            return jnp.asarray(0.5 + 0.1 * rng.normal(size=leaf.shape))
        return jnp.asarray(0.5 * rng.normal(size=leaf.shape))

    return jax.tree_util.tree_map_with_path(draw, structure)


def adapt(learner, params, ep):
    return jax.jit(learner.adapt)(params, ep.support_x, ep.support_y, jax.random.key(0))


def jitted(learner, ep, key=None):
    """``params -> task_loss_and_grad(...)`` under jit (eager flax is slow on a shared CPU)."""
    return jax.jit(lambda p: task_loss_and_grad(learner, p, ep, key))


def loss_and_grad(learner, params, ep, key=None):
    return jitted(learner, ep, key)(params)


def tree_dot(a, b):
    pairs = zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    return sum(float(jnp.vdot(x, y)) for x, y in pairs)


def assert_fd(fn, params, *, directions=3, eps=1e-5, rtol=1e-6, seed=0):
    """Central finite differences of the loss along random directions against ``<grads, v>``.

    ``fn`` is a jitted ``params -> (loss, accuracy, grads)``; its loss is evaluated at the perturbed
    points too, so that each test compiles one function.
    """
    _, _, grads = fn(params)
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(seed)
    for _ in range(directions):
        v = treedef.unflatten([jnp.asarray(rng.normal(size=x.shape)) for x in leaves])
        plus = fn(jax.tree.map(lambda p, d: p + eps * d, params, v))[0]
        minus = fn(jax.tree.map(lambda p, d: p - eps * d, params, v))[0]
        fd = (float(plus) - float(minus)) / (2 * eps)
        np.testing.assert_allclose(tree_dot(grads, v), fd, rtol=rtol, atol=1e-9)
    return grads


def numpy_sgd(w, b, x, y, lr, steps, ways):
    """Softmax regression by hand: grad of the mean cross-entropy is X^T (softmax - onehot) / n."""
    w, b, x = np.array(w), np.array(b), np.array(x).reshape(len(x), -1)
    onehot = np.eye(ways)[np.array(y)]
    for _ in range(steps):
        z = x @ w + b
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        g = (p - onehot) / len(x)
        w, b = w - lr * x.T @ g, b - lr * g.sum(0)
    return w, b


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("head_only", [False, True])
def test_inner_steps_equal_hand_written_sgd(steps, head_only):
    ep = episode(0, ways=3, shots=2)
    learner = maml(Linear(3), 3, inner_steps=steps, inner_lr=0.7, head_only=head_only)
    params = init(learner, ep)
    adapted = adapt(learner, params, ep)
    if not head_only:
        adapted = adapted["head"]
    w, b = numpy_sgd(params["head"]["kernel"], params["head"]["bias"], ep.support_x,
                     ep.support_y, 0.7, steps, 3)
    np.testing.assert_allclose(adapted["kernel"], w, rtol=1e-12)
    np.testing.assert_allclose(adapted["bias"], b, rtol=1e-12)


def test_more_inner_steps_at_test_time_share_params():
    ep = episode(1)
    train = maml(TinyMLP(), 2, inner_steps=1, inner_lr=0.5)
    test = maml(TinyMLP(), 2, inner_steps=3, inner_lr=0.5)
    params = init(train, ep)
    once = lambda p: adapt(train, p, ep)
    chex.assert_trees_all_close(adapt(test, params, ep),
                                once(once(once(params))), rtol=1e-12)


@pytest.mark.parametrize("kwargs", [dict(), dict(head_only=True), dict(learn_inner_lr=True),
                                    dict(learn_inner_lr=True, head_only=True)],
                         ids=["maml", "anil", "meta-sgd", "anil-meta-sgd"])
def test_second_order_meta_gradient_matches_finite_differences(kwargs):
    ep = episode(2)
    learner = maml(TinyMLP(), 2, inner_steps=2, inner_lr=0.5, **kwargs)
    params = init(learner, ep)
    key = jax.random.key(0)
    grads = assert_fd(jitted(learner, ep, key), params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_meta_gradient_of_a_conv_net_with_batch_statistics():
    model = Conv4(width=2, blocks=1, num_classes=2, downsample="stride", conv_impl="im2col",
                  bn_scale_init="uniform")
    ep = episode(3, shape=(8, 8, 1))
    learner = maml(model, 2, inner_steps=1, inner_lr=0.3)
    params = init(learner, ep)
    assert_fd(jitted(learner, ep), params, directions=2)


def test_first_order_is_the_query_gradient_at_the_adapted_parameters():
    ep = episode(4)
    model = TinyMLP()
    fo = maml(model, 2, inner_steps=2, inner_lr=0.5, first_order=True)
    so = maml(model, 2, inner_steps=2, inner_lr=0.5)
    params = init(fo, ep)
    _, _, g_fo = loss_and_grad(fo, params, ep, None)
    adapted = adapt(fo, params, ep)
    g_query = jax.jit(jax.grad(lambda a: cross_entropy(model.apply({"params": a}, ep.query_x),
                                                       ep.query_y)))(adapted)
    chex.assert_trees_all_close(g_fo, g_query, rtol=1e-12)
    _, _, g_so = loss_and_grad(so, params, ep, None)
    assert not np.allclose(g_so["Dense_0"]["kernel"], g_fo["Dense_0"]["kernel"], rtol=1e-3)


def test_meta_sgd_rates_live_in_params_and_start_as_maml():
    ep = episode(5)
    msgd = maml(TinyMLP(), 2, inner_steps=2, inner_lr=0.5, learn_inner_lr=True)
    plain = maml(TinyMLP(), 2, inner_steps=2, inner_lr=0.5)
    params = f64(jax.jit(msgd.init)(jax.random.key(0), ep.support_x))
    assert set(params) == {"model", "inner_lr"}
    chex.assert_trees_all_equal_shapes(params["inner_lr"], params["model"])
    np.testing.assert_allclose(jax.tree.leaves(params["inner_lr"])[0], 0.5)
    chex.assert_trees_all_close(adapt(msgd, params, ep),
                                adapt(plain, params["model"], ep),
                                rtol=1e-12)


def test_anil_adapts_the_head_only():
    ep = episode(6)
    anil = maml(TinyMLP(), 2, inner_steps=2, inner_lr=0.5, head_only=True)
    params = init(anil, ep)
    head = adapt(anil, params, ep)
    assert set(head) == {"kernel", "bias"}
    swapped = {**params, "head": head}
    np.testing.assert_allclose(jax.jit(anil.predict)(params, head, ep.query_x),
                               jax.jit(TinyMLP().apply)({"params": swapped}, ep.query_x),
                               rtol=1e-12)


def test_remat_gives_the_same_gradients():
    ep = episode(7)
    kw = dict(inner_steps=3, inner_lr=0.5)
    plain, remat = maml(TinyMLP(), 2, **kw), maml(TinyMLP(), 2, remat=True, **kw)
    params = init(plain, ep)
    a = loss_and_grad(plain, params, ep, None)
    b = loss_and_grad(remat, params, ep, None)
    chex.assert_trees_all_close(a, b, rtol=1e-12)


@pytest.mark.parametrize("unroll", [True, 2])
def test_unrolled_inner_loop_gives_the_same_gradients(unroll):
    ep = episode(7)
    kw = dict(inner_steps=3, inner_lr=0.5)
    plain, unrolled = maml(TinyMLP(), 2, **kw), maml(TinyMLP(), 2, unroll=unroll, **kw)
    params = init(plain, ep)
    chex.assert_trees_all_close(loss_and_grad(plain, params, ep, None),
                                loss_and_grad(unrolled, params, ep, None), rtol=1e-12)


def test_unrolled_inner_loop_is_counted_step_by_step():
    # XLA's cost analysis counts a loop's body once: with the scan, k inner steps cost as much as
    # one; unrolled, every step is counted, so the count grows by the same amount per step
    # (each step is the same computation, up to a few elementwise additions where the
    # backward pass accumulates: 741 and 747 FLOPs for this network)
    ep = episode(7)

    def flops(steps, unroll):
        learner = maml(TinyMLP(), 2, inner_steps=steps, inner_lr=0.5, unroll=unroll)
        params = init(learner, ep)
        lowered = jax.jit(lambda p: task_loss_and_grad(learner, p, ep, None)).lower(params)
        return lowered.cost_analysis()["flops"]

    scanned = [flops(k, 1) for k in (1, 2, 3)]
    assert scanned[0] == scanned[1] == scanned[2]
    unrolled = [flops(k, True) for k in (1, 2, 3)]
    assert unrolled[0] == scanned[0]  # one step: nothing to unroll
    per_step = unrolled[1] - unrolled[0]
    assert per_step > 0 and unrolled[2] - unrolled[1] == pytest.approx(per_step, rel=0.02)


def test_conjugate_gradient_solves_spd_system():
    rng = np.random.default_rng(0)
    m = rng.normal(size=(5, 5))
    a = m @ m.T + 0.5 * np.eye(5)
    b = rng.normal(size=5)
    x = conjugate_gradient(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), steps=5)
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8)
    assert not np.allclose(conjugate_gradient(lambda v: jnp.asarray(a) @ v, jnp.asarray(b),
                                              steps=2), np.linalg.solve(a, b), rtol=1e-3)


def test_imaml_matches_the_closed_form_on_a_quadratic():
    # inner: 0.5 (p - a)^T A (p - a) + lam/2 ||p - theta||^2  =>  p* = (A + lam I)^{-1}(A a + lam
    # theta),  dp*/dtheta = lam (A + lam I)^{-1};  outer: sum(sin p)  =>  grad = cos(p*).
    rng = np.random.default_rng(1)
    d, lam = 4, 1.5
    m = rng.normal(size=(d, d))
    a_mat = m @ m.T / d + 0.2 * np.eye(d)
    a_vec, theta = rng.normal(size=d), rng.normal(size=d)
    inner = lambda p: 0.5 * (p - a_vec) @ jnp.asarray(a_mat) @ (p - a_vec)
    outer = lambda p: (jnp.sum(jnp.sin(p["w"])), None)
    lr = 1.0 / (np.linalg.eigvalsh(a_mat).max() + lam)
    adapted, _, _, grad = jax.jit(lambda t: implicit_meta_grad(
        lambda p: inner(p["w"]), outer, t, lam=lam, inner_steps=400, inner_lr=lr,
        cg_steps=d))({"w": jnp.asarray(theta)})
    p_star = np.linalg.solve(a_mat + lam * np.eye(d), a_mat @ a_vec + lam * theta)
    exact = lam * np.linalg.solve(a_mat + lam * np.eye(d), np.cos(p_star))
    np.testing.assert_allclose(adapted["w"], p_star, rtol=1e-10)
    np.testing.assert_allclose(grad["w"], exact, rtol=1e-8)


def test_imaml_learner_matches_finite_differences_of_the_converged_inner_problem():
    ep = episode(8, ways=2, shots=2)
    learner = imaml(Linear(2), 2, inner_steps=150, inner_lr=0.4, lam=1.0, cg_steps=10)
    params = init(learner, ep)
    loss, acc, _ = loss_and_grad(learner, params, ep)
    np.testing.assert_allclose(loss, episode_loss(learner, params, ep, None)[0], rtol=1e-12)
    assert 0 <= acc <= 1
    # the loss of task_grad is the query loss at the (converged) adapted point, so its finite
    # differences are those of the true implicit function theta -> query loss(phi*(theta))
    assert_fd(jitted(learner, ep), params)


def test_reptile_gradient_is_params_minus_adapted():
    ep = episode(9, ways=3, shots=2)
    learner = reptile(Linear(3), 3, inner_steps=4, inner_lr=0.3)
    params = init(learner, ep)
    loss, _, grads = loss_and_grad(learner, params, ep, None)
    w, b = numpy_sgd(params["head"]["kernel"], params["head"]["bias"], ep.support_x,
                     ep.support_y, 0.3, 4, 3)
    np.testing.assert_allclose(grads["head"]["kernel"], params["head"]["kernel"] - w, rtol=1e-10)
    np.testing.assert_allclose(grads["head"]["bias"], params["head"]["bias"] - b, rtol=1e-10)
    z = np.array(ep.query_x) @ w + b
    ref = np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(z)), np.array(ep.query_y)])
    np.testing.assert_allclose(loss, ref, rtol=1e-10)


# compiling is the slow part on a shared 2-core CPU: MAML and the two task_grad learners; the
# conv net under vmap is the training loop's test
LEARNERS = {
    "maml": lambda m: maml(m, 2, inner_steps=1, inner_lr=0.3),
    "reptile": lambda m: reptile(m, 2, inner_steps=2),
    "imaml": lambda m: imaml(m, 2, inner_steps=2, cg_steps=2),
}


def meta_batch(seed, batch=3):
    eps = [episode(seed + i, shape=(2, 2, 1)) for i in range(batch)]
    return jax.tree.map(lambda *a: jnp.stack(a).astype(a[0].dtype), *eps)


@pytest.mark.parametrize("which", sorted(LEARNERS))
def test_vmapped_meta_step_traces_once_and_is_deterministic(which):
    learner = LEARNERS[which](TinyMLP())
    chex.clear_trace_counter()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(params, batch, key):
        keys = jax.random.split(key, 3)
        loss, _, grads = jax.vmap(lambda e, k: task_loss_and_grad(learner, params, e, k))(
            batch, keys)
        return loss.mean(), jax.tree.map(lambda g: g.mean(0), grads)

    params = init(learner, episode(0, shape=(2, 2, 1)))
    a = step(params, meta_batch(1), jax.random.key(2))
    b = step(params, meta_batch(1), jax.random.key(2))
    c = step(params, meta_batch(5), jax.random.key(3))  # new data, same shapes: no new trace
    chex.assert_trees_all_equal(a, b)
    assert np.isfinite(a[0]) and float(a[0]) != float(c[0])
    chex.assert_trees_all_equal_structs(a[1], params)


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="inner_steps"):
        maml(TinyMLP(), 2, inner_steps=-1)
    for bad in (0, -2, 1.5, "all"):
        with pytest.raises(ValueError, match="unroll"):
            maml(TinyMLP(), 2, unroll=bad)
    with pytest.raises(ValueError, match="ways=3"):
        jax.eval_shape(maml(TinyMLP(2), 3).init, jax.random.key(0), jnp.zeros((2, 4)))
