"""A batch run through a network in K chunks, one chunk's activations alive at a time: gradient
caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup") written as JAX's own rematerialisation.

    out, stats = map_chunks(forward, variables, inputs, chunks=4)   # forward(variables, inputs) -> (out, stats)
    parts = split(inputs, 4); inputs = merge(parts)                  # [n, B, ...] <-> [4, n, B/4, ...]

Every leaf of `inputs` and of forward's `out` holds the batch on its second axis ([n views, B,
...], as the step's views and the model's outputs do). Chunk j holds the rows j, j + K, j + 2K,
... of the batch: on a batch sharded over D devices in blocks (B/D rows each, a multiple of K)
every chunk has B/(DK) rows on each device, so cutting and joining move no data between devices
and the chunks are the same rows on any device count.

The chunks go through lax.map with the forward under jax.checkpoint: the forward pass keeps only
each chunk's outputs, and differentiation runs each chunk's forward again and its backward with
the gradients of the loss with respect to that chunk's outputs -- the gradient cache: the loss
sees every output of the batch at once (negatives, cross-correlations), so the gradients are
those of the whole batch, not an accumulation of per-chunk losses. What differs from one pass over
the batch is BatchNorm: each chunk is normalised with its own statistics (B/K rows, "ghost"
batch normalisation), and the running averages take the mean of the chunks' updates.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp


def split(tree, chunks: int):
  """Each leaf [n, B, ...] as [chunks, n, B / chunks, ...], chunk j holding rows j, j + chunks, ..."""
  def one(x):
    n, b = x.shape[:2]
    return jnp.moveaxis(x.reshape((n, b // chunks, chunks) + x.shape[2:]), 2, 0)
  return jax.tree.map(one, tree)


def merge(tree):
  """split's inverse: each leaf [chunks, n, B / chunks, ...] back to [n, B, ...]."""
  def one(x):
    k, n, b = x.shape[:3]
    return jnp.moveaxis(x, 0, 2).reshape((n, b * k) + x.shape[3:])
  return jax.tree.map(one, tree)


def map_chunks(forward: Callable, variables, inputs, chunks: int = 1):
  """forward(variables, inputs) -> (out, stats) on the batch in `chunks` chunks: (out of the whole
  batch, the mean of the chunks' stats). Differentiable in variables with one chunk's activations
  alive at a time (each chunk's forward runs again in the backward pass); chunks=1 calls forward."""
  if chunks == 1:
    return forward(variables, inputs)
  rematerialised = jax.checkpoint(forward, prevent_cse=False)  # inside a loop, CSE cannot undo it
  outs, stats = jax.lax.map(lambda part: rematerialised(variables, part), split(inputs, chunks))
  return merge(outs), jax.tree.map(lambda s: jnp.mean(s, axis=0), stats)
