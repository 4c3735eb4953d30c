"""The gradient cache's check for one method (tests/method_check.py runs it on 1 and on 4 devices):
the objective's value, gradients, BatchNorm statistics and method state with the batch in 2
chunks (config.batch_chunks, core.chunks) against the whole batch at once, on the same inputs.

    differences(config, mesh) -> {'value': ..., 'grads': ..., 'stats': ..., 'state': ..., 'rows': ...}

Where the network has BatchNorm (per-batch statistics), chunking changes what is normalised
together, so the batch is made of one half-batch repeated (each chunk holds the same images in the
same order, and the chunks' statistics are the batch's): then every output, loss term, gradient
and statistic must be the same, and a chunk cut or joined in the wrong order, an input not cut
with the batch, a target network's pass run whole, statistics summed rather than averaged or a
loss of per-chunk pieces shows. A network without BatchNorm (a ViT with heads without it) is
checked on distinct images: there the chunked objective is the whole batch's exactly.
"""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from simclr_jax import methods, models
from simclr_jax.core import chunks as chunks_lib
from simclr_jax.data import augment
from simclr_jax.stages import pretrain

CHUNKS = 2


def _relative(a, b) -> float:
  """The largest over the float leaves of max |a - b| relative to the leaf's max |a|, floored at a
  hundredth of the largest |a| of any leaf (a gradient that is zero but for rounding, as a bias
  before BatchNorm's, compares by the scale of the others); 0 for no leaves."""
  pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
           if np.issubdtype(np.asarray(x).dtype, np.floating)]
  if not pairs:
    return 0.0
  floor = 1e-2 * max(float(np.abs(x).max()) for x, _ in pairs) or 1.0
  return max(float(np.abs(x - y).max()) / max(float(np.abs(x).max()), floor) for x, y in pairs)


def _integers_equal(a, b) -> bool:
  return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
             if not np.issubdtype(np.asarray(x).dtype, np.floating))


def differences(config, mesh, per_chunk: int = 8) -> dict:
  """The chunked objective against the whole batch's (see the module's docstring) on the mesh's
  devices: relative differences of value, grads, stats and method state, whether integer state
  (a queue's pointer) is equal, and 'rows' ('distinct' or 'repeated')."""
  from simclr_jax.config_base import apply_overrides
  batch, image_shape = per_chunk * CHUNKS, (32, 32, 3)
  configs = {k: apply_overrides(config.copy_and_resolve_references(), {'batch_chunks': k, 'batch_size': batch})
             for k in (1, CHUNKS)}
  method = methods.get(config.method)(configs[1], 100)
  c = configs[1]
  model = method.make_model(models.encoder_for(c.model, c.width, c.dtype, c.stem, image_shape, c.patch_size), 10)
  variables = models.init_variables(model, 0, image_shape)
  state = method.init_state(variables)
  has_norm = bool(jax.tree.leaves(variables['batch_stats']))
  make = method.inputs(augment.settings_from_config(c.augment), augment.settings_from_config(c.augment, c.view2))
  images = np.random.default_rng(0).integers(0, 256, ((per_chunk if has_norm else batch),) + image_shape)
  inputs = jax.jit(make)(jax.random.PRNGKey(1), jnp.asarray(images, jnp.uint8))
  labels = jnp.arange(images.shape[0]) % 10
  if has_norm:  # one half-batch, repeated: chunk j holds rows j, j + 2, ... (core.chunks)
    inputs, labels = chunks_lib.merge(jax.tree.map(lambda x: jnp.stack([x] * CHUNKS), (inputs, labels[None])))
    labels = labels[0]
  inputs = jax.device_put(inputs, NamedSharding(mesh, P(None, 'data')))
  labels = jax.device_put(labels, NamedSharding(mesh, P('data')))
  variables, state = jax.device_put((variables, state), NamedSharding(mesh, P()))
  results = {}
  for k in (1, CHUNKS):
    loss_fn = pretrain.pretrain_loss_fn(model, methods.get(config.method)(configs[k], 100))
    objective = lambda p: loss_fn(p, variables['batch_stats'], state, inputs, labels, jnp.int32(3))
    (value, (stats, new_state, _)), grads = jax.jit(jax.value_and_grad(objective, has_aux=True))(variables['params'])
    results[k] = jax.tree.map(np.asarray, (value, grads, stats, new_state))
  one, chunked = results[1], results[CHUNKS]
  return {'value': _relative(one[0], chunked[0]), 'grads': _relative(one[1], chunked[1]),
          'stats': _relative(one[2], chunked[2]), 'state': _relative(one[3], chunked[3]),
          'state_integers_equal': _integers_equal(one[3], chunked[3]),
          'rows': 'repeated' if has_norm else 'distinct', 'grad_leaves': len(jax.tree.leaves(one[1]))}
