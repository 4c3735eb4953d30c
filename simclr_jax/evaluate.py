"""Evaluators run between epochs: kNN monitor for pretraining, test accuracy for classifiers.

    features = embed(encoder, variables, images, mesh)       # L2-normalised [N, F]
    top1 = knn_top1(train_f, train_y, test_f, test_y, num_classes=10)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import augment, parallel
from simclr_jax.losses import classification_loss


def _batches(n: int, batch: int):
  for start in range(0, n, batch):
    yield start, min(batch, n - start)


def _padded(x, batch):
  n = x.shape[0]
  if n == batch:
    return x
  return jnp.concatenate([x, jnp.zeros((batch - n,) + x.shape[1:], x.dtype)])


@functools.partial(jax.jit, static_argnames=('apply_fn', 'params'))
def _apply_eval(variables, images, apply_fn, params):
  return apply_fn(variables, augment.eval_view(images, params), train=False)


def run_inference(apply_fn, variables, images: jax.Array, mesh, batch: int,
                  params: augment.AugmentParams, output: str) -> jax.Array:
  """apply_fn(variables, x, train=False)[output] over device-resident uint8 images, in chunks."""
  n_dev = mesh.devices.size
  batch = max(n_dev, batch // n_dev * n_dev)
  outs = []
  for start, size in _batches(images.shape[0], batch):
    chunk = _padded(jax.lax.slice_in_dim(images, start, start + size), batch)
    chunk = jax.device_put(chunk, parallel.data_sharded(mesh))
    outs.append(_apply_eval(variables, chunk, apply_fn, params)[output][:size])
  return jnp.concatenate(outs)


def embed(apply_fn, variables, images, mesh, batch: int, params: augment.AugmentParams) -> jax.Array:
  """Inference-mode features, L2-normalised (float32)."""
  f = run_inference(apply_fn, variables, images, mesh, batch, params, 'features')
  return f / jnp.maximum(jnp.linalg.norm(f, axis=-1, keepdims=True), 1e-12)


@functools.partial(jax.jit, static_argnames=('k', 'num_classes'))
def _knn_chunk(test_f, train_f, train_y, k, num_classes, temperature):
  sim, idx = jax.lax.top_k(test_f @ train_f.T, k)
  weights = jnp.exp(sim / temperature)
  votes = jax.nn.one_hot(train_y[idx], num_classes) * weights[..., None]
  return jnp.argmax(votes.sum(axis=1), axis=-1)


def knn_top1(train_f, train_y, test_f, test_y, num_classes: int, k: int = 200,
             temperature: float = 0.1, chunk: int = 1000) -> float:
  """Weighted kNN (cosine similarity, exp(sim / temperature) votes) top-1 on normalised features."""
  k = min(k, train_f.shape[0])
  correct = 0
  for start, size in _batches(test_f.shape[0], chunk):
    pred = _knn_chunk(test_f[start:start + size], train_f, train_y, k, num_classes, temperature)
    correct += int(jnp.sum(pred == test_y[start:start + size]))
  return correct / test_f.shape[0]


class KnnEvaluator:
  """Embeds the train and test splits with the encoder and reports kNN top-1."""

  def __init__(self, encoder_apply, data, mesh, config, aug_params):
    self.apply, self.data, self.mesh, self.config, self.aug = encoder_apply, data, mesh, config, aug_params

  def __call__(self, variables) -> dict:
    c, d = self.config, self.data
    embed_ = functools.partial(embed, self.apply, variables, mesh=self.mesh, batch=c.eval_batch_size,
                               params=self.aug)
    top1 = knn_top1(embed_(d.train_images), d.train_labels, embed_(d.test_images), d.test_labels,
                    d.num_classes, c.knn_k, c.knn_temperature)
    return {'knn_top1': top1}


class ClassifierEvaluator:
  """Test top-1 and loss of a classifier in inference mode."""

  def __init__(self, apply_fn, data, mesh, config, aug_params):
    self.apply, self.data, self.mesh, self.config, self.aug = apply_fn, data, mesh, config, aug_params

  def __call__(self, variables) -> dict:
    d = self.data
    logits = run_inference(self.apply, variables, d.test_images, self.mesh,
                           self.config.eval_batch_size, self.aug, 'logits')
    top1 = float(jnp.mean(jnp.argmax(logits, -1) == d.test_labels))
    loss = float(classification_loss(logits, d.test_labels))
    return {'test_top1': top1, 'test_loss': loss}
