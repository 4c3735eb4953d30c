"""Classifier stages: finetune (from a SimCLR encoder), linear_eval (frozen encoder) and supervised.

    results = train_and_evaluate(config, workdir)

linear_eval has two protocols: 'features' (the default) embeds the splits once without
augmentation and fits a logistic regression on the frozen features (simclr_jax.linear_probe),
in seconds; 'augmented' trains a linear head on the frozen encoder with the classifier
augmentation for config.epochs, as the SimCLR paper's linear evaluation does.
"""
from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simclr_jax import augment, checkpoint, input_pipeline, models, optim, parallel, train_loop
from simclr_jax.errors import CheckpointError
from simclr_jax.evaluate import EvalContext, LinearEvaluator, make_evaluators
from simclr_jax.losses import classification_loss
from simclr_jax.metrics import log, write_results

ENCODER_FIELDS = ('model', 'width', 'stem')


def make_model(config, image_size: int, num_classes: int) -> models.Classifier:
  encoder = models.make_encoder(config.model, config.width, config.dtype,
                                models.resolve_stem(config.stem, image_size))
  return models.Classifier(encoder=encoder, num_classes=num_classes,
                           frozen_encoder=config.stage == 'linear_eval')


def load_pretrained_encoder(init_from: str, wanted: dict, variables: dict) -> dict:
  """Replaces the encoder subtree of `variables` with init_from's; wanted: {'model', 'width',
  'stem'} of this run (stem resolved); errors name what differs."""
  encoder, meta = checkpoint.restore_encoder(init_from)
  saved = dict(meta['config'])
  if saved.get('stage') != 'pretrain':
    raise CheckpointError(f'init_from {init_from!r} is a {saved.get("stage")!r} run, not a '
                          'pretraining run: point it at a workdir made with configs/pretrain.py')
  size = (meta.get('image_shape') or [32])[0]
  saved['stem'] = models.resolve_stem(saved.get('stem', 'cifar'), size)
  differ = [f'{k}: checkpoint {saved.get(k)!r}, config {wanted[k]!r}'
            for k in ENCODER_FIELDS if saved.get(k) != wanted[k]]
  if differ:
    raise CheckpointError(f'init_from {init_from!r} has another encoder ({"; ".join(differ)}): '
                          'set the same --config.model, --config.width and --config.stem as the '
                          'pretraining run')
  for collection in ('params', 'batch_stats'):
    want = jax.tree.map(np.shape, variables[collection]['encoder'])
    got = jax.tree.map(np.shape, encoder[collection])
    if want != got:
      raise CheckpointError(f'init_from {init_from!r}: encoder {collection} do not match this '
                            'architecture; pretrain with the same model and width')
  return {c: {**variables[c], 'encoder': jax.tree.map(jnp.asarray, encoder[c])}
          for c in ('params', 'batch_stats')}


def classifier_loss_fn(model):
  def loss_fn(params, batch_stats, x, labels):
    out, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                               mutable=['batch_stats'])
    logits = out['logits']
    loss = classification_loss(logits, labels)
    top1 = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, (updated['batch_stats'], {'loss': loss, 'top1': top1})
  return loss_fn


def _initial_variables(config, model, image_shape) -> dict:
  variables = models.init_variables(model, config.seed, image_shape)
  if config.stage in ('finetune', 'linear_eval'):
    wanted = {'model': config.model, 'width': config.width, 'stem': model.encoder.stem}
    variables = load_pretrained_encoder(config.init_from, wanted, variables)
  return variables


def build_task(config, mesh, inputs) -> train_loop.Task:
  parallel.check_batch_size(config.batch_size, mesh)
  model = make_model(config, inputs.image_shape[0], inputs.num_classes)
  aug = augment.settings_from_config(config.augment)
  spe = inputs.steps_per_epoch
  schedule = optim.make_schedule(config.learning_rate, config.lr_scaling, config.batch_size,
                                 config.epochs, config.warmup_epochs, spe)
  model_tx = optim.make_optimizer(config.optimizer, schedule, config.momentum, config.weight_decay)
  frozen = config.stage == 'linear_eval'
  tx = optim.partition({'model': model_tx, 'frozen': optax.set_to_zero()},
                       {'encoder': 'frozen' if frozen else 'model', 'head': 'model'})
  variables = _initial_variables(config, model, inputs.image_shape)
  state = train_loop.TrainState.create(variables['params'], variables['batch_stats'], tx, config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  step_fn = train_loop.make_train_step(
      classifier_loss_fn(model), functools.partial(augment.classifier_views, settings=aug), tx,
      config.inject_nan_at_step)
  infer = jax.jit(lambda v, x: model.apply(v, augment.eval_view(x, aug), train=False))
  notes = {'stage': config.stage, 'label_fraction': config.label_fraction,
           'init_from': config.init_from if config.stage != 'supervised' else None}
  if frozen:
    notes['protocol'] = 'augmented'
  return train_loop.Task(
      state=state, step_fn=step_fn, inputs=inputs,
      evaluators=make_evaluators(config.evals, {'labels'}), infer=infer, summarize=summarize,
      schedule=schedule, notes=notes)


def summarize(record: dict, facts: dict) -> dict:
  """results.json of a classifier stage, from the checkpoint's record."""
  evals = [r for r in record['evals'] if 'test_top1' in r]
  best = max(evals, key=lambda r: r['test_top1']) if evals else {}
  last = evals[-1] if evals else {}
  probes = [r for r in record['evals'] if 'linear_top1' in r]
  return {**facts, 'test_top1': last.get('test_top1'), 'best_test_top1': best.get('test_top1'),
          'best_epoch': best.get('epoch'), 'train_top1': last.get('train_top1'),
          'linear_top1': probes[-1]['linear_top1'] if probes else None,
          'history': [{k: r.get(k) for k in ('epoch', 'train_top1', 'train_loss', 'test_top1', 'test_loss')}
                      for r in evals]}


def linear_probe_on_features(config, workdir: str, mesh, inputs) -> dict:
  """linear_eval with protocol 'features': embed once, fit the probe, write results.json."""
  results_path = os.path.join(workdir, 'results.json')
  if os.path.exists(results_path):
    log(f'the run in {workdir} is complete: results.json is kept as it is')
    with open(results_path) as f:
      return json.load(f)
  t0 = time.time()
  model = make_model(config, inputs.image_shape[0], inputs.num_classes)
  aug = augment.settings_from_config(config.augment)
  variables = jax.device_put(_initial_variables(config, model, inputs.image_shape),
                             parallel.replicated(mesh))
  infer = jax.jit(lambda v, x: model.apply(v, augment.eval_view(x, aug), train=False))
  ctx = EvalContext(infer, variables, inputs, config.eval_batch_size)
  ctx.features('train'), ctx.features('test')
  embed_seconds = time.time() - t0
  fit = LinearEvaluator(config.evals.linear)(ctx)
  results = {'stage': 'linear_eval', 'protocol': 'features', 'test_top1': fit['linear_top1'],
             'best_test_top1': fit['linear_top1'], 'weight_decay': fit['linear_weight_decay'],
             'label_fraction': config.label_fraction,
             'init_from': config.init_from, 'train_examples': inputs.num_examples,
             'embed_seconds': embed_seconds, 'train_seconds': time.time() - t0, 'epochs': 0,
             'history': []}
  return write_results(workdir, results)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or, for linear_eval on features, fits) the classifier stage; writes results.json."""
  done = train_loop.finished_results(config, workdir)
  if done is not None:
    return done
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  if config.stage in ('finetune', 'linear_eval'):
    checkpoint.find_checkpoint(config.init_from)  # fail before the data is read
  train_loop.log_setup(config)
  inputs, _ = input_pipeline.make_inputs(config, mesh, config.label_fraction, require_labels=True)
  train_loop.log_model(config, inputs)
  if config.stage == 'linear_eval' and config.protocol == 'features':
    return linear_probe_on_features(config, workdir, mesh, inputs)
  return train_loop.run(config, workdir, build_task(config, mesh, inputs))
