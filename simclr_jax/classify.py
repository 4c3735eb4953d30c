"""Classifier stages: finetune (from a SimCLR encoder), linear_eval (frozen encoder) and supervised.

    results = train_and_evaluate(config, workdir)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import augment, checkpoint, models, optim, parallel, train_loop
from simclr_jax.errors import CheckpointError
from simclr_jax.evaluate import ClassifierEvaluator
from simclr_jax.losses import classification_loss

ENCODER_FIELDS = ('model', 'width')


def make_model(config, num_classes: int) -> models.Classifier:
  encoder = models.make_encoder(config.model, config.width, config.dtype)
  return models.Classifier(encoder=encoder, num_classes=num_classes,
                           frozen_encoder=config.stage == 'linear_eval')


def load_pretrained_encoder(config, variables: dict) -> dict:
  """Replaces the encoder subtree of `variables` with init_from's; errors name what differs."""
  encoder, saved = checkpoint.restore_encoder(config.init_from)
  if saved.get('stage') != 'pretrain':
    raise CheckpointError(f'init_from {config.init_from!r} is a {saved.get("stage")!r} run, not a '
                          'pretraining run: point it at a workdir made with configs/pretrain.py')
  differ = [f'{k}: checkpoint {saved.get(k)!r}, config {config[k]!r}'
            for k in ENCODER_FIELDS if saved.get(k) != config[k]]
  if differ:
    raise CheckpointError(f'init_from {config.init_from!r} has another encoder ({"; ".join(differ)}): '
                          'set the same --config.model and --config.width as the pretraining run')
  for collection in ('params', 'batch_stats'):
    want = jax.tree.map(np.shape, variables[collection]['encoder'])
    got = jax.tree.map(np.shape, encoder[collection])
    if want != got:
      raise CheckpointError(f'init_from {config.init_from!r}: encoder {collection} do not match this '
                            'architecture; pretrain with the same model and width')
  return {c: {**variables[c], 'encoder': jax.tree.map(jnp.asarray, encoder[c])}
          for c in ('params', 'batch_stats')}


def classifier_loss_fn(model):
  def loss_fn(params, batch_stats, x, labels):
    out, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                               mutable=['batch_stats'])
    logits = out['logits']
    top1 = jnp.mean(jnp.argmax(logits, -1) == labels)
    return classification_loss(logits, labels), (updated['batch_stats'], {'top1': top1})
  return loss_fn


def build_task(config, mesh, data: train_loop.DeviceData) -> train_loop.Task:
  parallel.check_batch_size(config.batch_size, mesh)
  model = make_model(config, data.num_classes)
  aug = augment.augment_params_from_config(config.augment)
  spe = train_loop.steps_per_epoch(data.train_images.shape[0], config.batch_size)
  schedule = optim.make_schedule(config, spe)
  tx = optim.make_optimizer(config, schedule)
  x = jnp.zeros((2,) + tuple(data.train_images.shape[1:]), jnp.float32)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(config.seed), x)
  if config.stage in ('finetune', 'linear_eval'):
    variables = load_pretrained_encoder(config, variables)
  trainable = 'head' if config.stage == 'linear_eval' else None
  state = train_loop.init_state(variables['params'], variables['batch_stats'], tx, config.seed, trainable)
  state = jax.device_put(state, parallel.replicated(mesh))
  step_fn = train_loop.make_train_step(
      classifier_loss_fn(model), functools.partial(augment.classifier_views, params=aug), tx, mesh,
      config.batch_size, spe, trainable=trainable, skip_nonfinite=config.skip_nonfinite,
      inject_nan_at_step=config.inject_nan_at_step)
  evaluator = ClassifierEvaluator(_apply(model), data, mesh, config, aug)
  return train_loop.Task(
      state=state, step_fn=step_fn, images=data.train_images, labels=data.train_labels,
      steps_per_epoch=spe, evaluate=evaluator, eval_every_epochs=config.eval_every_epochs,
      summarize=functools.partial(summarize, config), schedule=schedule)


def _apply(model):
  def apply(variables, x, train=False):
    return model.apply(variables, x, train=train)
  return apply


def summarize(config, writer, facts: dict) -> dict:
  evals = writer.rows('eval')
  best = max(evals, key=lambda r: r['test_top1']) if evals else {}
  last = evals[-1] if evals else {}
  return {**facts, 'stage': config.stage, 'test_top1': last.get('test_top1'),
          'best_test_top1': best.get('test_top1'), 'best_epoch': best.get('epoch'),
          'train_top1': last.get('train_top1'), 'label_fraction': config.label_fraction,
          'init_from': config.init_from if config.stage != 'supervised' else None,
          'history': [{k: r.get(k) for k in ('epoch', 'train_top1', 'train_loss', 'test_top1', 'test_loss')}
                      for r in evals]}


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains the classifier stage to config.epochs and writes workdir/results.json."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  if config.stage in ('finetune', 'linear_eval'):
    checkpoint.find_checkpoint(config.init_from)  # fail before the data is read
  data = train_loop.load_device_data(config, mesh, config.label_fraction)
  return train_loop.run(config, workdir, build_task(config, mesh, data))
