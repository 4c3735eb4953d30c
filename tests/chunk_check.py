"""The gradient cache's chunk-by-chunk check (config.batch_chunks, core.chunks), beside the one in
tests/method_check.py (every method on 1 device whole against 4 devices in chunks, on inputs whose
chunks are the same images, where BatchNorm over a chunk is BatchNorm over the batch).

    ghost_differences(config)   # tests/methods/test_methods.py: against a chunk-by-chunk reference

That check cannot see what makes chunks differ from each other; ghost_differences covers it, on
distinct images and one device: the chunked objective of a network with BatchNorm against a
reference written here chunk by chunk (rows cut and put back by hand, the online network and an
EMA target run on each chunk in a Python loop, the running statistics averaged), and, to show the
chunks were taken, how far the whole batch's is. A target run whole, statistics of one chunk
instead of their mean, chunks swapped or chunking not applied all show there.
"""
import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import methods, models
from simclr_jax.data import augment
from simclr_jax.stages import pretrain

CHUNKS = 2


def _relative(a, b) -> float:
  """The largest over the float leaves of max |a - b| relative to the leaf's max |a| (at least a
  ten-thousandth of the largest |a| of any leaf); a leaf below a hundred-thousandth of that, such
  as the gradient of a bias before BatchNorm (zero but for rounding), relative to the largest.
  0 for no leaves."""
  pairs = [(np.asarray(x, np.float64), np.asarray(y, np.float64)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
           if np.issubdtype(np.asarray(x).dtype, np.floating)]
  if not pairs:
    return 0.0
  top = max(float(np.abs(x).max()) for x, _ in pairs) or 1.0
  scale = lambda m: top if m < 1e-5 * top else max(m, 1e-4 * top)
  return max(float(np.abs(x - y).max()) / scale(float(np.abs(x).max())) for x, y in pairs)


def _encoder(c):
  """The config's encoder family at its smallest, for quick compiles: a ResNet of a stem and one
  residual block (BatchNorm in both), or a ViT of one block."""
  from simclr_jax.models.resnet import ResNet
  from simclr_jax.models.vit import ViT
  if models.is_vit(c.model):
    return ViT(dim=24, depth=1, heads=3, patch_size=c.patch_size, image_size=32, architecture=c.model)
  return ResNet(stage_sizes=(1,), width=0.125, architecture=c.model)


def _rows(tree, j):
  """Chunk j of inputs or outputs [n, B, ...] (rows j, j + CHUNKS, ...), cut by hand."""
  return jax.tree.map(lambda x: x[:, j::CHUNKS], tree)


def _join(parts):
  """Chunks' trees [n, B / CHUNKS, ...] back in the batch's order, by hand."""
  def one(*xs):
    out = jnp.zeros((xs[0].shape[0], xs[0].shape[1] * CHUNKS) + xs[0].shape[2:], xs[0].dtype)
    for j, x in enumerate(xs):
      out = out.at[:, j::CHUNKS].set(x)
    return out
  return jax.tree.map(one, *parts)


def _mean(trees):
  return jax.tree.map(lambda *xs: sum(xs) / len(xs), *trees)


def ghost_differences(config, per_chunk: int = 8) -> dict:
  """On distinct images and one device, the chunked objective of a network with BatchNorm against
  a chunk-by-chunk reference written here: each chunk's rows cut by hand, the online network and
  (for an EMA target) the target run on each chunk in a Python loop, the outputs put back by hand,
  the running statistics averaged, then the method's loss; no lax.map, no rematerialisation.
  Also how far the whole batch's objective is (BatchNorm over the whole batch): it must differ,
  or the chunks were not taken. No online probe (the reference leaves out pretrain_loss_fn's)."""
  from simclr_jax.config_base import apply_overrides
  from simclr_jax.methods.base import MomentumMethod, apply_views
  batch, image_shape = per_chunk * CHUNKS, (32, 32, 3)
  configs = {k: apply_overrides(config.copy_and_resolve_references(), {'batch_chunks': k, 'batch_size': batch})
             for k in (1, CHUNKS)}
  c = configs[1]
  reference = methods.get(c.method)(c, 100)
  model = reference.make_model(_encoder(c), 0)
  variables = models.init_variables(model, 0, image_shape)
  state = reference.init_state(variables)
  make = reference.inputs(augment.settings_from_config(c.augment), augment.settings_from_config(c.augment, c.view2))
  images = np.random.default_rng(0).integers(0, 256, (batch,) + image_shape)
  inputs = jax.jit(make)(jax.random.PRNGKey(1), jnp.asarray(images, jnp.uint8))
  labels, step = jnp.zeros((batch,), jnp.int32), jnp.int32(3)

  if isinstance(reference, MomentumMethod):
    def target_by_hand(model, state, views):
      target = state['target']
      parts = [apply_views(model, target, _rows(views, j), reference.PER_VIEW_BATCHNORM, target=True)
               for j in range(CHUNKS)]
      out = _join([o for o, _ in parts])
      state = {**state, 'target': {**target, 'batch_stats': _mean([s for _, s in parts])}}
      return {name: jax.lax.stop_gradient(o['projection']) for name, o in out.items()}, state
    reference.target_projections = target_by_hand

  def by_hand(params):
    v = {'params': params, 'batch_stats': variables['batch_stats']}
    parts = [reference.forward(model, v, _rows(inputs, j)) for j in range(CHUNKS)]
    loss, new_state, _ = reference.loss(model, _join([o for o, _ in parts]), state, inputs, step, params)
    return loss, (_mean([s for _, s in parts]), new_state)

  def library(k):
    loss_fn = pretrain.pretrain_loss_fn(model, methods.get(c.method)(configs[k], 100))
    def objective(params):
      value, (stats, new_state, _) = loss_fn(params, variables['batch_stats'], state, inputs, labels, step)
      return value, (stats, new_state)
    return objective

  results = {name: jax.tree.map(np.asarray, jax.jit(jax.value_and_grad(fn, has_aux=True))(variables['params']))
             for name, fn in (('hand', by_hand), ('chunked', library(CHUNKS)), ('whole', library(1)))}
  flat = lambda r: (r[0][0], r[1], r[0][1][0], r[0][1][1])  # value, grads, stats, state
  hand, chunked, whole = (flat(results[k]) for k in ('hand', 'chunked', 'whole'))
  return {'value': _relative(hand[0], chunked[0]), 'grads': _relative(hand[1], chunked[1]),
          'stats': _relative(hand[2], chunked[2]), 'state': _relative(hand[3], chunked[3]),
          'whole_grads': _relative(whole[1], chunked[1]), 'whole_stats': _relative(whole[2], chunked[2]),
          'target_stats': bool(jax.tree.leaves(hand[3].get('target', {}).get('batch_stats', {})))}
