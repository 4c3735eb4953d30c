"""core.chunks: the strided cut of a batch and its inverse, and map_chunks' value and gradient of a
loss that couples every row (what the gradient cache must get right) against one pass over the
whole batch; the running statistics averaged over the chunks."""
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.core import chunks


def test_chunk_j_holds_rows_j_j_plus_k_and_merge_puts_them_back():
  x = jnp.arange(2 * 12 * 3).reshape(2, 12, 3)  # [n views, B, ...]
  parts = chunks.split({'v': x}, 4)['v']
  assert parts.shape == (4, 2, 3, 3)
  for j in range(4):
    np.testing.assert_array_equal(parts[j], x[:, j::4])
  np.testing.assert_array_equal(chunks.merge(parts), x)


def _forward(params, inputs):
  """A toy network whose output depends on its chunk's statistics (a per-batch centring)."""
  h = jnp.tanh(inputs['x'] @ params['w'])
  mean = h.mean(axis=(0, 1))
  return {'z': h - mean}, {'mean': mean}


def _contrastive(z):
  """A loss over every pair of rows of the batch (a softmax over the whole batch's similarities)."""
  a, b = z[0], z[1]
  logits = a @ b.T
  return -jnp.mean(jax.nn.log_softmax(logits, axis=-1)[jnp.arange(len(a)), jnp.arange(len(a))])


def test_map_chunks_gives_the_loss_and_gradient_of_the_chunks_outputs_together():
  rng = np.random.default_rng(0)
  params = {'w': jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)}
  inputs = {'x': jnp.asarray(rng.normal(size=(2, 12, 5)), jnp.float32)}

  def cached(p):
    out, stats = chunks.map_chunks(_forward, p, inputs, 3)
    return _contrastive(out['z']), stats

  def direct(p):  # each chunk's forward by hand, its outputs put back in the batch's order
    outs = [_forward(p, {'x': inputs['x'][:, j::3]}) for j in range(3)]
    z = jnp.zeros((2, 12, 4))
    for j, (o, _) in enumerate(outs):
      z = z.at[:, j::3].set(o['z'])
    return _contrastive(z), {'mean': sum(s['mean'] for _, s in outs) / 3}

  (v1, s1), g1 = jax.jit(jax.value_and_grad(cached, has_aux=True))(params)
  (v2, s2), g2 = jax.value_and_grad(direct, has_aux=True)(params)
  assert abs(float(v1) - float(v2)) < 1e-6
  np.testing.assert_allclose(g1['w'], g2['w'], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(s1['mean'], s2['mean'], rtol=1e-6, atol=1e-7)
  assert float(jnp.abs(g1['w']).max()) > 1e-3
  # one chunk is the plain forward; chunks change a statistics-dependent output (the centring)
  whole = chunks.map_chunks(_forward, params, inputs, 1)[0]['z']
  np.testing.assert_array_equal(whole, _forward(params, inputs)[0]['z'])
  assert float(jnp.abs(whole - chunks.map_chunks(_forward, params, inputs, 3)[0]['z']).max()) > 1e-3
