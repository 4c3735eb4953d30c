"""Losses shared by the stages: NT-Xent (SimCLR), classification and distillation.

    loss = nt_xent(z, temperature=0.5)  # z: [2N, D], rows 2k and 2k+1 are two views of image k
    loss = classification_loss(logits, labels)          # images without a label (-1) do not count
    loss = distillation_loss(student, teacher, 1.0)     # soft cross-entropy at a temperature
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


def labelled_mean(values: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean of per-image values over the images that have a label (labels >= 0); 0 when none has."""
  known = (labels >= 0).astype(jnp.float32)
  return jnp.sum(values * known) / jnp.maximum(known.sum(), 1.0)


def classification_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy in float32 over the images that have a label (-1: none, such as
  an unreadable image of a folder)."""
  ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.maximum(labels, 0))
  return labelled_mean(ce, labels)


def top1(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Share of the labelled images whose largest logit is their label."""
  return labelled_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), labels)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float) -> jax.Array:
  """SimCLR v2's distillation loss (Chen et al. 2020b, eq. 2): the cross-entropy of the student's
  softmax at `temperature` against the teacher's at the same temperature, averaged over the batch."""
  teacher = jax.nn.softmax(jax.lax.stop_gradient(teacher_logits).astype(jnp.float32) / temperature)
  student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  return -jnp.mean(jnp.sum(teacher * student, axis=-1))
