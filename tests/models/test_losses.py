import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from simclr_jax.methods.simclr import nt_xent


def _interleaved(z, *args, **kwargs):
  """nt_xent of rows 2k and 2k+1 as the two views of image k (the layout the oracle reads)."""
  return nt_xent(z[0::2], z[1::2], *args, **kwargs)


def numpy_nt_xent(z, temperature):
  z = z.astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  logits = z @ z.T / temperature
  np.fill_diagonal(logits, -np.inf)
  targets = np.arange(len(z)) ^ 1
  m = logits.max(axis=1, keepdims=True)
  log_probs = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
  return -log_probs[np.arange(len(z)), targets].mean()


@pytest.mark.parametrize('seed,n,d,t', [(0, 8, 16, 0.5), (1, 64, 128, 0.5), (2, 32, 8, 0.2), (3, 4, 3, 1.0)])
def test_matches_float64_numpy_and_optax(seed, n, d, t):
  z = np.random.RandomState(seed).randn(n, d).astype(np.float32)
  ours = float(_interleaved(jnp.asarray(z), t))
  assert abs(ours - numpy_nt_xent(z, t)) < 1e-5
  labels = jnp.arange(n) // 2  # rows 2k and 2k+1 form a positive pair
  assert abs(ours - float(optax.ntxent(jnp.asarray(z), labels, t))) < 1e-5


def test_identical_views_give_lower_loss_than_random_ones():
  z = np.random.RandomState(0).randn(16, 32).astype(np.float32)
  paired = np.repeat(z[::2], 2, axis=0)
  assert float(_interleaved(jnp.asarray(paired))) < float(_interleaved(jnp.asarray(z)))


def test_clamp_option_removes_gradient_of_negatively_similar_negatives():
  # Row 0 and 1 are a pair; row 2 is anti-aligned with row 0, row 3 is orthogonal-ish.
  z = jnp.array([[1.0, 0.1, 0.0], [0.9, 0.2, 0.1], [-1.0, 0.0, 0.2], [0.0, 1.0, -0.3]])
  free = jax.grad(lambda z: _interleaved(z, 0.5))(z)
  clamped = jax.grad(lambda z: _interleaved(z, 0.5, clamp_similarity=True))(z)
  assert not np.allclose(free, clamped)
  # With the clamp, every similarity of row 2 is below 1e-7 except with row 3, so its gradient
  # comes from row 3's pairs only; without it row 2 gets gradient from all rows.
  assert float(jnp.abs(free[2]).sum()) > float(jnp.abs(clamped[2]).sum())
  assert float(_interleaved(z, 0.5)) != float(_interleaved(z, 0.5, clamp_similarity=True))


def test_bfloat16_projections_get_a_float32_loss_computed_in_float32():
  """The loss of bfloat16 projections equals the float32 loss of the same (bf16-rounded) values,
  to float32 precision; computed in bfloat16 it would be off by about 1e-2."""
  z = jnp.asarray(np.random.RandomState(0).randn(64, 128), jnp.bfloat16)
  loss = _interleaved(z, 0.1)
  assert loss.dtype == jnp.float32
  reference = numpy_nt_xent(np.asarray(z.astype(jnp.float32)), 0.1)
  assert abs(float(loss) - reference) < 1e-5
  in_bf16 = jax.nn.logsumexp(jnp.where(jnp.eye(64, dtype=bool), -1e9, (z @ z.T / 0.1).astype(jnp.bfloat16)), -1)
  assert float(jnp.abs(in_bf16.astype(jnp.float32) - jax.nn.logsumexp(
      jnp.where(jnp.eye(64, dtype=bool), -1e9, z.astype(jnp.float32) @ z.astype(jnp.float32).T / 0.1), -1)).max()) > 1e-3
