"""Evaluators by type, each instance named in config.evals and given only its own sub-config.

    evaluators = make_evaluators(config.evals, available={'labels', 'probe'})
    ctx = EvalContext(infer, variables, inputs, batch=1000)  # one round; outputs computed once
    scalars = {}
    for e in evaluators: scalars.update(e(ctx))              # {'<name>_top1': ..., ...}

config.evals.<name> = evaluator_config('knn', every_epochs=10, k=200) (config_base): the type
picks the class (TYPES), several instances of one type may run (kNN at k=20 and at k=200), and
each figure is '<name>_<metric>' with the protocol of its type. A new evaluator is one class
here (type, protocol, label, metrics, FIELDS with their defaults, evaluate(ctx)) and one config line.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax.evals.linear_probe import fit_linear_probe
from simclr_jax.models.losses import classification_loss, top1
from simclr_jax.core.log import log


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

  def labelled(self, split: str, output: str = 'features') -> tuple[jax.Array, np.ndarray]:
    """(an output, labels) of the split's images that have a label."""
    labels, values = self.labels(split), self.outputs(split)[output]
    if np.all(labels >= 0):
      return values, labels
    keep = np.flatnonzero(labels >= 0)
    return values[keep], labels[keep]


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


class Evaluator:
  """Base: the instance's name and every_epochs; `requires` names what it cannot run without;
  `protocol` says how its figures are obtained (README, "Evaluation"); `metrics` the names of
  its figures, reported as '<name>_<metric>'."""
  type = ''
  protocol = ''
  requires = ('labels',)
  metrics = ('top1',)
  FIELDS: dict = {}  # the type's own config fields: name -> (default, what it means)

  def __init__(self, name: str, cfg):
    self.name, self.every_epochs = name, int(cfg.every_epochs)
    self.skipped = False  # the run lacks what it requires: it never runs, its figures stay null

  @property
  def label(self) -> str:
    """How the report names it."""
    return self.name

  def key(self, metric: str = 'top1') -> str:
    return f'{self.name}_{metric}'

  def __call__(self, ctx: EvalContext) -> dict:
    return {self.key(m): v for m, v in self.evaluate(ctx).items()}


class KnnEvaluator(Evaluator):
  """kNN top-1 of the test split against the training split on normalised features."""
  type, protocol = 'knn', 'knn'
  FIELDS = {'k': (200, 'the neighbours that vote'),
            'temperature': (0.1, "each neighbour's vote is exp(similarity / temperature)")}

  def __init__(self, name, cfg):
    super().__init__(name, cfg)
    self.k, self.temperature = int(cfg.k), float(cfg.temperature)

  @property
  def label(self) -> str:
    return f'kNN (k={self.k})'

  def evaluate(self, ctx: EvalContext) -> dict:
    train_f, train_y = ctx.labelled('train')
    test_f, test_y = ctx.labelled('test')
    return {'top1': knn_top1(normalized(train_f), train_y, normalized(test_f), test_y, ctx.num_classes,
                             self.k, self.temperature)}


class OnlineLinearEvaluator(Evaluator):
  """Test top-1 of the online linear probe trained inside the pretraining step."""
  type, protocol = 'online_linear', 'online'
  requires = ('labels', 'probe')
  label = 'online linear probe'

  def evaluate(self, ctx: EvalContext) -> dict:
    logits, labels = ctx.labelled('test', 'probe_logits')
    return {'top1': float(top1(logits, jnp.asarray(labels)))}


class LinearEvaluator(Evaluator):
  """The offline linear probe on frozen, unaugmented features (simclr_jax.evals.linear_probe)."""
  type, protocol = 'linear', 'features'
  metrics = ('top1', 'weight_decay')
  label = 'linear probe on frozen features'
  FIELDS = {'weight_decays': ((1e-6, 1e-5, 1e-4, 1e-3, 1e-2), 'the decays tried, the best on a held-out tenth of '
                              'the training split'),
            'steps': (500, 'optimiser steps of each fit')}

  def __init__(self, name, cfg):
    super().__init__(name, cfg)
    self.weight_decays = tuple(float(w) for w in cfg.weight_decays)
    self.steps = int(cfg.steps)

  def evaluate(self, ctx: EvalContext) -> dict:
    train_f, train_y = ctx.labelled('train')
    test_f, test_y = ctx.labelled('test')
    fit = fit_linear_probe(train_f, train_y, test_f, test_y, ctx.num_classes, self.weight_decays, self.steps)
    return {'top1': fit['test_top1'], 'weight_decay': fit['weight_decay']}


class ClassifyEvaluator(Evaluator):
  """Test top-1 and loss of a classifier in inference mode."""
  type, protocol = 'classify', 'trained'
  metrics = ('top1', 'loss')
  label = 'classifier'

  def evaluate(self, ctx: EvalContext) -> dict:
    logits, labels = ctx.labelled('test', 'logits')
    labels = jnp.asarray(labels)
    return {'top1': float(top1(logits, labels)), 'loss': float(classification_loss(logits, labels))}


TYPES = {cls.type: cls for cls in (KnnEvaluator, OnlineLinearEvaluator, LinearEvaluator, ClassifyEvaluator)}


def make_evaluators(evals_cfg, available) -> list[Evaluator]:
  """The evaluators of config.evals with every_epochs >= 0; one whose requirements the run lacks
  is marked skipped (it never runs; results.json gives its figures as null), with a notice."""
  out = []
  for name, cfg in evals_cfg.items():
    if cfg.every_epochs < 0:
      continue
    evaluator = TYPES[cfg.get('type') or name](name, cfg)  # the type defaults to the name
    missing = [r for r in evaluator.requires if r not in available]
    if missing:
      log(f'notice: evaluator {name} is skipped: the run has no {" or ".join(missing)}')
      evaluator.skipped = True
    out.append(evaluator)
  return out


def describe(evaluators) -> dict:
  """{'<name>_<metric>': {'protocol', 'label'}} of every figure the evaluators give, for
  results.json and the report."""
  return {e.key(m): {'protocol': e.protocol, 'label': e.label} for e in evaluators for m in e.metrics
          if m == 'top1'}
