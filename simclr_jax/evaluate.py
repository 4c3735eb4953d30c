"""Evaluators, chosen and scheduled from config.evals, each given only its own sub-config.

    evaluators = make_evaluators(config.evals, available={'labels', 'probe'})
    ctx = EvalContext(infer, variables, inputs, batch=1000)  # one round; outputs computed once
    scalars = {}
    for e in evaluators: scalars.update(e(ctx))

A new evaluator is a class with `name`, a constructor taking its sub-config (which has
every_epochs) and __call__(ctx) -> {name: float}, plus an entry in EVALUATORS and a default
sub-config in config_base.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.linear_probe import fit_linear_probe
from simclr_jax.losses import classification_loss
from simclr_jax.metrics import log


class EvalContext:
  """One evaluation round: the model's inference-mode outputs on each split, computed on first
  use and shared by every evaluator of the round."""

  def __init__(self, infer, variables, inputs, batch: int):
    self.infer, self.variables, self.inputs, self.batch = infer, variables, inputs, batch
    self._outputs, self._labels = {}, {}

  @property
  def num_classes(self) -> int:
    return self.inputs.num_classes

  def labels(self, split: str) -> np.ndarray:
    """The split's labels, in the order of its outputs (-1: no label)."""
    self.outputs(split)
    return self._labels[split]

  def outputs(self, split: str) -> dict:
    """{output name: [N, ...] float32} of the model in inference mode on the unaugmented split."""
    if split not in self._outputs:
      parts, labels = [], []
      for chunk, valid, chunk_labels in self.inputs.chunks(split, self.batch):
        parts.append(jax.tree.map(lambda a, n=valid: a[:n], self.infer(self.variables, chunk)))
        labels.append(np.asarray(chunk_labels))
      self._outputs[split] = jax.tree.map(lambda *a: jnp.concatenate(a), *parts)
      self._labels[split] = np.concatenate(labels)
    return self._outputs[split]

  def features(self, split: str) -> jax.Array:
    return self.outputs(split)['features']

  def labelled(self, split: str) -> tuple[jax.Array, np.ndarray]:
    """(features, labels) of the split's images that have a label."""
    labels = self.labels(split)
    if np.all(labels >= 0):
      return self.features(split), labels
    keep = np.flatnonzero(labels >= 0)
    return self.features(split)[keep], labels[keep]


def normalized(f: jax.Array) -> jax.Array:
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
  train_y = jnp.asarray(train_y)
  correct = 0
  for start in range(0, test_f.shape[0], chunk):
    pred = _knn_chunk(test_f[start:start + chunk], train_f, train_y, k, num_classes, temperature)
    correct += int(jnp.sum(pred == jnp.asarray(test_y[start:start + chunk])))
  return correct / test_f.shape[0]


def top1(logits: jax.Array, labels) -> float:
  return float(jnp.mean(jnp.argmax(logits, -1) == jnp.asarray(labels)))


class Evaluator:
  """Base: keeps every_epochs from the sub-config; `requires` names what it cannot run without."""
  name = ''
  requires = ('labels',)

  def __init__(self, cfg):
    self.every_epochs = int(cfg.every_epochs)


class KnnEvaluator(Evaluator):
  """kNN top-1 of the test split against the training split on normalised encoder features."""
  name = 'knn'

  def __init__(self, cfg):
    super().__init__(cfg)
    self.k, self.temperature = int(cfg.k), float(cfg.temperature)

  def __call__(self, ctx: EvalContext) -> dict:
    train_f, train_y = ctx.labelled('train')
    top1 = knn_top1(normalized(train_f), train_y, normalized(ctx.features('test')), ctx.labels('test'),
                    ctx.num_classes, self.k, self.temperature)
    return {'knn_top1': top1}


class OnlineLinearEvaluator(Evaluator):
  """Test top-1 of the online linear probe trained inside the pretraining step."""
  name = 'online_linear'
  requires = ('labels', 'probe')

  def __call__(self, ctx: EvalContext) -> dict:
    return {'online_linear_top1': top1(ctx.outputs('test')['probe_logits'], ctx.labels('test'))}


class LinearEvaluator(Evaluator):
  """The offline linear probe on frozen, unaugmented features (simclr_jax.linear_probe)."""
  name = 'linear'

  def __init__(self, cfg):
    super().__init__(cfg)
    self.weight_decays = tuple(float(w) for w in cfg.weight_decays)
    self.steps = int(cfg.steps)

  def __call__(self, ctx: EvalContext) -> dict:
    train_f, train_y = ctx.labelled('train')
    fit = fit_linear_probe(train_f, train_y, ctx.features('test'), ctx.labels('test'),
                           ctx.num_classes, self.weight_decays, self.steps)
    return {'linear_top1': fit['test_top1'], 'linear_weight_decay': fit['weight_decay']}


class ClassifyEvaluator(Evaluator):
  """Test top-1 and loss of a classifier in inference mode."""
  name = 'classify'

  def __call__(self, ctx: EvalContext) -> dict:
    logits = ctx.outputs('test')['logits']
    labels = jnp.asarray(ctx.labels('test'))
    return {'test_top1': top1(logits, labels), 'test_loss': float(classification_loss(logits, labels))}


EVALUATORS = {cls.name: cls for cls in (KnnEvaluator, OnlineLinearEvaluator, LinearEvaluator,
                                        ClassifyEvaluator)}


def make_evaluators(evals_cfg, available) -> list[Evaluator]:
  """The evaluators of config.evals that can run (every_epochs >= 0 and what they require is
  available); each skipped one gets a one-line notice."""
  out = []
  for name, cfg in evals_cfg.items():
    cls = EVALUATORS[name]
    if cfg.every_epochs < 0:
      continue
    missing = [r for r in cls.requires if r not in available]
    if missing:
      log(f'notice: evaluator {name} is skipped: the run has no {" or ".join(missing)}')
      continue
    out.append(cls(cfg))
  return out
