"""R2D2's ridge head against numpy.linalg.solve (both the primal and the Woodbury branch) and its
gradients (through the solve, to the scale, bias and lambda) against finite differences."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from smallsample.episodes import Episode
from smallsample.learners.base import task_loss_and_grad
from smallsample.learners.closed_form import r2d2, ridge_weights


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


class Embed(nn.Module):
    dim: int = 6

    @nn.compact
    def __call__(self, x):
        return jnp.tanh(nn.Dense(self.dim)(x))


@pytest.mark.parametrize("n,d", [(4, 9), (9, 4)], ids=["woodbury", "primal"])
def test_ridge_weights_equal_numpy_solve(n, d):
    rng = np.random.default_rng(n)
    x, y, lam = rng.normal(size=(n, d)), np.eye(3)[rng.integers(0, 3, n)], 0.7
    ref = np.linalg.solve(x.T @ x + lam * np.eye(d), x.T @ y)  # always the d x d primal form
    np.testing.assert_allclose(jax.jit(ridge_weights)(x, y, lam), ref, rtol=1e-10)


def test_r2d2_logits_and_gradients():
    rng = np.random.default_rng(3)
    ep = Episode(jnp.asarray(rng.normal(size=(4, 3))), jnp.array([0, 1, 0, 1]),
                 jnp.asarray(rng.normal(size=(6, 3))), jnp.array([0, 1, 0, 1, 1, 0]))
    learner = r2d2(Embed(), 2, lam=0.5, scale=2.0)
    rng = np.random.default_rng(0)
    structure = jax.eval_shape(learner.init, jax.random.key(0), ep.support_x)
    params = jax.tree.map(lambda s: rng.normal(size=s.shape), structure)
    params["head"] = {"scale": np.float64(2.0), "bias": np.float64(0.3),
                      "log_lambda": np.log(0.5)}

    def logits_fn(p):
        return learner.predict(p, learner.adapt(p, ep.support_x, ep.support_y, None), ep.query_x)

    logits = jax.jit(logits_fn)(params)
    dense = params["model"]["Dense_0"]
    xs = np.tanh(np.asarray(ep.support_x) @ dense["kernel"] + dense["bias"])
    xq = np.tanh(np.asarray(ep.query_x) @ dense["kernel"] + dense["bias"])
    w = np.linalg.solve(xs.T @ xs + 0.5 * np.eye(6), xs.T @ np.eye(2)[np.asarray(ep.support_y)])
    np.testing.assert_allclose(logits, 2.0 * xq @ w + 0.3, rtol=1e-10)

    fn = jax.jit(lambda p: task_loss_and_grad(learner, p, ep, None))
    _, _, grads = fn(params)
    assert all(float(jnp.abs(g)) > 0 for g in jax.tree.leaves(grads["head"]))
    leaves, treedef = jax.tree.flatten(params)
    eps = 1e-6
    for seed in range(2):
        r = np.random.default_rng(seed)
        v = treedef.unflatten([jnp.asarray(r.normal(size=np.shape(x))) for x in leaves])
        fd = (fn(jax.tree.map(lambda p, d: p + eps * d, params, v))[0]
              - fn(jax.tree.map(lambda p, d: p - eps * d, params, v))[0]) / (2 * eps)
        dot = sum(float(jnp.vdot(g, d)) for g, d in
                  zip(jax.tree.leaves(grads), jax.tree.leaves(v), strict=True))
        np.testing.assert_allclose(dot, fd, rtol=1e-6)


def test_fixed_lambda_is_not_a_parameter_and_bad_lambda_raises():
    learner = r2d2(Embed(), 2, lam=2.0, learn_lambda=False)
    params = jax.eval_shape(learner.init, jax.random.key(0), jnp.ones((2, 3)))
    assert set(params["head"]) == {"scale", "bias"}
    assert set(jax.eval_shape(r2d2(Embed(), 2).init, jax.random.key(0), jnp.ones((2, 3)))["head"]
               ) == {"scale", "bias", "log_lambda"}
    with pytest.raises(ValueError, match="lam"):
        r2d2(Embed(), 2, lam=0.0)
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        ridge_weights(jnp.ones((3, 2)), jnp.ones((4, 2)), 1.0)
