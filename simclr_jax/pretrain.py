"""SimCLR pretraining: two augmented views, NT-Xent on the projections, kNN monitor.

    results = train_and_evaluate(config, workdir)
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from simclr_jax import augment, models, optim, parallel, train_loop
from simclr_jax.evaluate import KnnEvaluator
from simclr_jax.losses import nt_xent


def make_model(config) -> models.SimCLRModel:
  encoder = models.make_encoder(config.model, config.width, config.dtype)
  return models.SimCLRModel(encoder=encoder, projection_dims=tuple(config.projection_dims))


def init_variables(model, seed: int, image_shape) -> dict:
  """Float32 params and batch_stats on the host's default device."""
  x = jnp.zeros((2,) + tuple(image_shape), jnp.float32)
  return jax.jit(functools.partial(model.init, train=False))(jax.random.PRNGKey(seed), x)


def simclr_loss_fn(model, temperature: float, clamp: bool):
  def loss_fn(params, batch_stats, views, labels):
    out, updated = model.apply({'params': params, 'batch_stats': batch_stats}, views, train=True,
                               mutable=['batch_stats'])
    return nt_xent(out['projection'], temperature, clamp), (updated['batch_stats'], {})
  return loss_fn


def build_task(config, mesh, data: train_loop.DeviceData) -> train_loop.Task:
  """Model, optimiser, initial state and compiled step for pretraining."""
  parallel.check_batch_size(config.batch_size, mesh)
  model = make_model(config)
  aug = augment.augment_params_from_config(config.augment)
  spe = train_loop.steps_per_epoch(data.train_images.shape[0], config.batch_size)
  schedule = optim.make_schedule(config, spe)
  tx = optim.make_optimizer(config, schedule)
  variables = init_variables(model, config.seed, data.train_images.shape[1:])
  state = train_loop.init_state(variables['params'], variables['batch_stats'], tx, config.seed)
  state = jax.device_put(state, parallel.replicated(mesh))
  step_fn = train_loop.make_train_step(
      simclr_loss_fn(model, config.temperature, config.clamp_similarity),
      functools.partial(augment.simclr_views, params=aug), tx, mesh, config.batch_size, spe,
      skip_nonfinite=config.skip_nonfinite, inject_nan_at_step=config.inject_nan_at_step)
  encoder_apply = _encoder_apply(model.encoder)
  evaluator = KnnEvaluator(encoder_apply, data, mesh, config, aug)
  return train_loop.Task(
      state=state, step_fn=step_fn, images=data.train_images, labels=data.train_labels,
      steps_per_epoch=spe, evaluate=lambda v: evaluator(_encoder_variables(v)),
      eval_every_epochs=config.knn_every_epochs, summarize=summarize, schedule=schedule)


def _encoder_apply(encoder):
  def apply(variables, x, train=False):
    return {'features': encoder.apply(variables, x, train=train)}
  return apply


def _encoder_variables(variables: dict) -> dict:
  return {k: v['encoder'] for k, v in variables.items()}


def summarize(writer, facts: dict) -> dict:
  train, evals = writer.rows('train'), writer.rows('eval')
  return {**facts, 'final_loss': train[-1]['loss'] if train else None,
          'knn_top1': evals[-1]['knn_top1'] if evals else None,
          'knn_history': [(r['epoch'], r['knn_top1']) for r in evals]}


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains to config.epochs (resuming from workdir) and writes workdir/results.json."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  data = train_loop.load_device_data(config, mesh)
  return train_loop.run(config, workdir, build_task(config, mesh, data))
