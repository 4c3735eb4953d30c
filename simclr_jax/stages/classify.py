"""Classifier stages: finetune (from a pretraining run's encoder), linear_eval (frozen encoder)
and supervised (from random weights).

    results = train_and_evaluate(config, workdir)

finetune and linear_eval start from init_from's encoder and, with finetune_from_head_layer = K
> 0, the first K layers of its projector (SimCLR v2's fine-tuning from inside the head).
linear_eval has two protocols: 'features' (the default) embeds the splits once without
augmentation and fits a logistic regression on the frozen features (simclr_jax.evals.linear_probe),
in seconds; 'augmented' trains a linear head on the frozen encoder with the classifier
augmentation for config.epochs, as the SimCLR paper's linear evaluation does.
"""
from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from simclr_jax import config_base, models
from simclr_jax.data import augment
from simclr_jax.train import checkpoint
from simclr_jax.core import interrupts
from simclr_jax.train import optim
from simclr_jax.core import parallel
from simclr_jax.stages import runner, starts
from simclr_jax.train import loop
from simclr_jax.train.step import TrainState, make_train_step
from simclr_jax.core.errors import CheckpointError
from simclr_jax.evals import EvalContext, TYPES, make_evaluators
from simclr_jax.models.losses import classification_loss, top1
from simclr_jax.train.metric_writer import write_results



def restore_pretrained(init_from: str, wanted: dict, head_layer: int) -> tuple[dict, dict]:
  """(the encoder variables of init_from, with its projector's first head_layer layers; its
  meta['model']). wanted: this run's encoder_spec (starts.check_encoder compares it); errors name
  what differs."""
  variables, meta = checkpoint.restore_encoder(init_from, head_layers=head_layer)
  saved = meta.get('config', {})
  if saved.get('stage') != 'pretrain':
    raise CheckpointError(f'init_from {init_from!r} is a {saved.get("stage")!r} run, not a '
                          'pretraining run: point it at a workdir made with configs/pretrain.py or a '
                          'method\'s config')
  spec = meta['model']
  starts.check_encoder(init_from, spec, {k: wanted.get(k) for k in starts.ENCODER})
  layers = len((spec.get('projector') or {}).get('dims', ()))
  if head_layer >= max(layers, 1):
    raise CheckpointError(f'config.finetune_from_head_layer={head_layer} but the projector of init_from '
                          f'{init_from!r} has {layers} layers, of which {max(layers - 1, 0)} hidden: use a '
                          f'value from 0 to {max(layers - 1, 0)}')
  return variables, spec


def classifier_loss_fn(model):
  def loss_fn(params, batch_stats, method_state, x, labels, step):
    out, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                               mutable=['batch_stats'])
    logits = out['logits']
    loss = classification_loss(logits, labels)
    return loss, (updated.get('batch_stats', {}), method_state, {'loss': loss, 'top1': top1(logits, labels)})
  return loss_fn


def build_model(config, image_shape, num_classes: int):
  """(Classifier, initial variables, encoder spec for the checkpoints) of a classifier stage:
  random weights, or init_from's encoder (and head layers) for finetune and linear_eval."""
  encoder = models.encoder_for(config.model, config.width, config.dtype, config.stem, image_shape,
                                 config.patch_size, config.remat)
  head_layer = config.get('finetune_from_head_layer', 0)
  restored, spec = None, {}
  if config.get('init_from'):
    restored, spec = restore_pretrained(config.init_from, models.encoder_spec(encoder, image_shape), head_layer)
  projector = models.head_layers(spec.get('projector'), head_layer, encoder.dtype)
  model = models.Classifier(encoder=encoder, num_classes=num_classes, projector=projector,
                            frozen_encoder=config.stage == 'linear_eval')
  variables = models.init_variables(model, config.seed, image_shape)
  if restored is not None:
    for collection in ('params', 'batch_stats'):
      for part, tree in restored[collection].items():
        want = jax.tree.map(np.shape, variables[collection].get(part, {}))
        if want != jax.tree.map(np.shape, tree):
          raise CheckpointError(f'init_from {config.init_from!r}: {part} {collection} do not match this '
                                'architecture; pretrain with the same model and width')
        variables = {**variables, collection: {**variables[collection], part: jax.tree.map(jnp.asarray, tree)}}
  return model, variables, models.encoder_spec(encoder, image_shape, projector, head_layer)


def build_task(config, mesh, inputs, eval_inputs, total_steps: int) -> loop.Task:
  """The classifier, its optimiser for a run of total_steps, the state and the compiled step."""
  model, variables, spec = build_model(config, inputs.image_shape, inputs.num_classes)
  aug = augment.settings_from_config(config.augment)
  opt = runner.optimizer(config, total_steps, inputs.steps_per_epoch)
  body = 'frozen' if config.stage == 'linear_eval' else 'model'
  tx = opt.build(lambda learning_rate, _: optim.partition(
      {'model': opt.make(learning_rate), 'frozen': optax.set_to_zero()},
      {'encoder': body, 'projector': body, 'head': 'model'}))
  state = TrainState.create(variables['params'], variables['batch_stats'], tx, config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  step_fn = make_train_step(
      classifier_loss_fn(model), functools.partial(augment.classifier_views, settings=aug), tx,
      inject_nan_at_step=config.inject_nan_at_step)
  notes = {'stage': config.stage, 'label_fraction': config.label_fraction,
           'init_from': config.get('init_from') or None,
           'finetune_from_head_layer': spec['feature_layer']}
  if config.stage == 'linear_eval':
    notes['protocol'] = 'augmented'
  evaluators = make_evaluators(config.evals, {'labels'})
  return loop.Task(
      state=state, step_fn=step_fn, inputs=inputs, evaluators=evaluators,
      infer=augment.inference(functools.partial(model.apply, train=False), aug),
      summarize=functools.partial(summarize, evaluators=evaluators), schedule=opt.schedule, notes=notes,
      meta={'model': spec}, describe=('blocks rematerialised',) if config.remat else ())


def summarize(record: dict, facts: dict, evaluators=()) -> dict:
  """results.json of a classifier stage, from the checkpoint's record: the 'test' evaluator's
  final and best top-1, the per-epoch history, every evaluator's figures."""
  evals = [r for r in record['evals'] if 'test_top1' in r]
  best = max(evals, key=lambda r: r['test_top1']) if evals else {}
  last = evals[-1] if evals else {}
  return {**facts, **runner.evaluator_figures(record, evaluators), 'test_top1': last.get('test_top1'),
          'best_test_top1': best.get('test_top1'), 'best_epoch': best.get('epoch'),
          'train_top1': last.get('train_top1'),
          'history': [{k: r.get(k) for k in ('epoch', 'train_top1', 'train_loss', 'test_top1', 'test_loss')}
                      for r in evals]}


def linear_probe_on_features(probe_settings, eval_batch_size: int, workdir: str, task: loop.Task) -> dict:
  """linear_eval with protocol 'features' (probe_settings: config.evals.linear): embed once, fit
  the probe, write results.json."""
  t0 = time.time()
  ctx = EvalContext(task.infer, task.state.variables, task.inputs, eval_batch_size)
  with interrupts.phase('embedding the splits'):
    ctx.outputs('train'), ctx.outputs('test')
  embed_seconds = time.time() - t0
  probe = TYPES['linear']('linear', probe_settings)
  with interrupts.phase('fitting the features probe'):
    fit = probe(ctx)
  results = {'stage': 'linear_eval', 'protocol': 'features', 'test_top1': fit['linear_top1'],
             'best_test_top1': fit['linear_top1'], 'weight_decay': fit['linear_weight_decay'],
             **{k: task.notes[k] for k in ('label_fraction', 'init_from', 'finetune_from_head_layer')},
             'train_examples': task.inputs.num_examples, 'embed_seconds': embed_seconds,
             'train_seconds': time.time() - t0, 'epochs': 0, 'history': [],
             'protocols': {'test_top1': 'features'}}
  return write_results(workdir, results)


def train_and_evaluate(config, workdir: str) -> dict:
  """Trains (or, for linear_eval on features, fits) the classifier stage; writes results.json."""
  starts = {'init_from': config.init_from} if config.stage in config_base.DOWNSTREAM else {}
  features = config.stage == 'linear_eval' and config.protocol == 'features'
  return runner.train_and_evaluate(
      config, workdir, build_task, starts, label_fraction=config.label_fraction, require_labels=True,
      finish=functools.partial(linear_probe_on_features, config.evals.linear, config.eval_batch_size, workdir)
      if features else None,
      small_set_notice=not features)
