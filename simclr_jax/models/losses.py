"""Losses of the classifier stages: classification and distillation (a method's own loss is in
its module, methods/<name>.py).

    loss = classification_loss(logits, labels)          # images without a label (-1) do not count
    loss = distillation_loss(student, teacher, 1.0)     # soft cross-entropy at a temperature
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

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
