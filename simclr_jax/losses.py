"""NT-Xent, the SimCLR contrastive loss.

    loss = nt_xent(z, temperature=0.5)  # z: [2N, D], rows 2k and 2k+1 are two views of image k
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

_MASKED = -1e9  # finite, so no -inf reaches the softmax or a NaN check


def nt_xent(z: jax.Array, temperature: float = 0.5, clamp_similarity: bool = False) -> jax.Array:
  """Mean NT-Xent over all 2N rows, computed in float32.

  Args:
    z: [2N, D] projections; row i's positive is row i XOR 1.
    temperature: divides the cosine similarities.
    clamp_similarity: clamp similarities at 1e-7 before scaling, as the PyTorch
      write-up's code does. This zeroes the gradient of every negative pair whose
      similarity is negative, so it is off by default.
  """
  z = z.astype(jnp.float32)
  z = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  sim = z @ z.T
  if clamp_similarity:
    sim = jnp.maximum(sim, 1e-7)
  logits = sim / temperature
  n = z.shape[0]
  logits = jnp.where(jnp.eye(n, dtype=bool), _MASKED, logits)
  targets = jnp.arange(n) ^ 1
  return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy with integer labels, in float32."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels).mean()
