"""SimCLR pretraining: two augmented views, NT-Xent on the projections, an online linear probe,
and the evaluators of config.evals (kNN, online probe, offline linear probe).

    results = train_and_evaluate(config, workdir)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax

from simclr_jax import augment, input_pipeline, models, optim, parallel, train_loop
from simclr_jax.evaluate import make_evaluators
from simclr_jax.losses import nt_xent


def make_model(config, image_size: int, probe_classes: int = 0) -> models.SimCLRModel:
  encoder = models.make_encoder(config.model, config.width, config.dtype,
                                models.resolve_stem(config.stem, image_size))
  return models.SimCLRModel(encoder=encoder, projection_dims=tuple(config.projection_dims),
                            probe_classes=probe_classes)


def simclr_loss_fn(model, temperature: float, clamp: bool):
  """NT-Xent on the projections of the views (rows 2k, 2k+1 of image k), plus, when the model
  has the online probe, its cross-entropy on the first view's stop-gradient features."""
  def loss_fn(params, batch_stats, views, labels):
    out, updated = model.apply({'params': params, 'batch_stats': batch_stats}, views, train=True,
                               mutable=['batch_stats'])
    loss = nt_xent(out['projection'], temperature, clamp)
    metrics, objective = {'loss': loss}, loss
    if 'probe_logits' in out:  # images without a label (-1) do not train the probe
      logits = out['probe_logits'][0::2].astype(jnp.float32)
      known = (labels >= 0).astype(jnp.float32)
      count = jnp.maximum(known.sum(), 1.0)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(labels, 0))
      probe_loss = jnp.sum(ce * known) / count
      objective = objective + probe_loss
      metrics.update(probe_loss=probe_loss,
                     probe_top1=jnp.sum((jnp.argmax(logits, -1) == labels) * known) / count)
    return objective, (updated['batch_stats'], metrics)
  return loss_fn


def make_tx(config, steps_per_epoch: int):
  """(optimiser, schedule): config's optimiser for the encoder and projector, Adam for the probe."""
  schedule = optim.make_schedule(config.learning_rate, config.lr_scaling, config.batch_size,
                                 config.epochs, config.warmup_epochs, steps_per_epoch)
  model_tx = optim.make_optimizer(config.optimizer, schedule, config.momentum, config.weight_decay)
  groups = {'encoder': 'model', 'projector': 'model', 'online_probe': 'probe'}
  tx = optim.partition({'model': model_tx, 'probe': optax.adam(config.online_probe_learning_rate)},
                       groups)
  return tx, schedule


def build_task(config, mesh, inputs, eval_inputs=None, make_views=None) -> train_loop.Task:
  """Model, optimiser, initial state, compiled step and evaluators for pretraining. eval_inputs
  (default: inputs) holds the labelled splits of the monitors; make_views(key, images_uint8)
  replaces the SimCLR augmentation (the benchmark's ablation)."""
  parallel.check_batch_size(config.batch_size, mesh)
  eval_inputs = eval_inputs or inputs
  probe = inputs.num_classes > 0 and config.online_probe_learning_rate > 0
  model = make_model(config, inputs.image_shape[0], inputs.num_classes if probe else 0)
  aug = augment.settings_from_config(config.augment)
  tx, schedule = make_tx(config, inputs.steps_per_epoch)
  variables = models.init_variables(model, config.seed, inputs.image_shape)
  state = train_loop.TrainState.create(variables['params'], variables['batch_stats'], tx, config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  step_fn = train_loop.make_train_step(
      simclr_loss_fn(model, config.temperature, config.clamp_similarity),
      make_views or functools.partial(augment.simclr_views, settings=aug), tx, config.inject_nan_at_step)
  labelled = eval_inputs.labelled_test
  available = {'labels'} if labelled else set()
  if probe and labelled and eval_inputs.num_classes == inputs.num_classes:
    available.add('probe')
  infer = jax.jit(lambda v, x: model.apply(v, augment.eval_view(x, aug), train=False))
  return train_loop.Task(
      state=state, step_fn=step_fn, inputs=inputs, evaluators=make_evaluators(config.evals, available),
      infer=infer, summarize=summarize, schedule=schedule, eval_inputs=eval_inputs)


def _last(record: dict, key: str):
  rows = [r for r in record['evals'] if key in r]
  return rows[-1][key] if rows else None


def summarize(record: dict, facts: dict) -> dict:
  """results.json of a pretraining run, from the checkpoint's record."""
  knn = [[r['epoch'], r['knn_top1']] for r in record['evals'] if 'knn_top1' in r]
  return {**facts, 'final_loss': (record['train'] or {}).get('loss'),
          'knn_top1': _last(record, 'knn_top1'),
          'online_linear_top1': _last(record, 'online_linear_top1'),
          'linear_top1': _last(record, 'linear_top1'),
          'linear_weight_decay': _last(record, 'linear_weight_decay'),
          'protocols': {'knn_top1': 'knn', 'online_linear_top1': 'online', 'linear_top1': 'features'},
          'knn_history': knn}


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains to config.epochs (resuming from workdir) and writes workdir/results.json."""
  done = train_loop.finished_results(config, workdir)
  if done is not None:
    return done
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  train_loop.log_setup(config)
  inputs, eval_inputs = input_pipeline.make_inputs(config, mesh)
  train_loop.log_model(config, inputs)
  return train_loop.run(config, workdir, build_task(config, mesh, inputs, eval_inputs))
