"""Self-supervised pretraining with the method config.method names (simclr_jax.methods): the
views it declares, made on the accelerator, its model, loss, state and update hook in one compiled step,
an online linear probe, a collapse monitor and the evaluators of config.evals.

    results = train_and_evaluate(config, workdir)
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import optax

from simclr_jax import methods, models
from simclr_jax.data import augment, views as views_lib
from simclr_jax.train import optim
from simclr_jax.core import parallel
from simclr_jax.core.chunks import map_chunks
from simclr_jax.stages import runner
from simclr_jax.train import loop
from simclr_jax.train.step import TrainState, make_train_step
from simclr_jax.evals import make_evaluators
from simclr_jax.models.losses import classification_loss, top1
from simclr_jax.methods.base import Group, probe_view
from simclr_jax.core.log import log


def pretrain_loss_fn(model, method):
  """The method's loss on the online model's outputs for the views ({group: [n, B, ...]}, each
  group through the model in one call or one view at a time, as the method says), plus, when the
  model has the online probe, its cross-entropy on the stop-gradient features of the first view
  of the first group (images without a label do not train it). With method.chunks > 1 the model
  runs on the batch chunk by chunk and the loss on every output at once (core.chunks: the
  gradient cache, exact but for BatchNorm's statistics per chunk)."""
  forward = functools.partial(method.forward, model)

  def loss_fn(params, batch_stats, method_state, views, labels, step):
    out, batch_stats = map_chunks(forward, {'params': params, 'batch_stats': batch_stats}, views, method.chunks)
    loss, method_state, extra = method.loss(model, out, method_state, views, step, params)
    metrics, objective = {'loss': loss, **extra}, loss
    first = probe_view(out)
    if 'probe_logits' in first:
      logits = first['probe_logits']
      probe_loss = classification_loss(logits, labels)
      objective = objective + probe_loss
      metrics.update(probe_loss=probe_loss, probe_top1=top1(logits, labels))
    return objective, (batch_stats, method_state, metrics)
  return loss_fn


def _group_key(group: Group) -> str:
  """The name of a parameter group's optimiser in the optimiser state ('constant': SimSiam's
  predictor, as checkpoints before the groups were declared name it)."""
  parts = ([f'frozen{group.frozen_steps}'] if group.frozen_steps else []) + (['constant'] if group.constant_lr else [])
  return '_'.join(parts) or 'model'


def make_tx(opt: runner.Optimizer, probe_learning_rate: float, groups: dict | None = None):
  """The stage's optimiser (runner.optimizer) for the model, Adam for the online probe, and the
  method's parameter groups ({module: methods.base.Group}, Method.param_groups()) apart: at the
  peak learning rate throughout (without warmup or decay) and/or frozen for their first steps."""
  groups = groups or {}
  labels = {'online_probe': 'probe', **{name: _group_key(g) for name, g in groups.items()}}

  def transforms(learning_rate, peak):
    out = {'model': opt.make(learning_rate), 'probe': optax.adam(probe_learning_rate)}
    for group in groups.values():
      tx = opt.make(peak if group.constant_lr else learning_rate)
      out[_group_key(group)] = optim.frozen_for(group.frozen_steps, tx) if group.frozen_steps else tx
    return optim.partition(out, labels, default='model')
  return opt.build(transforms)


def collapse_statistics(z):
  """(deviation, rank) of embeddings z [N, D]: the standard deviation over the batch of the
  L2-normalised embeddings, averaged over dimensions (about 1/sqrt(D) when healthy, 0 when
  collapsed; SimSiam, section 4.1), and RankMe (Garrido et al. 2023): the exponential of the
  entropy of the normalised singular values."""
  z = z.astype(jnp.float32)
  normed = z / jnp.maximum(jnp.linalg.norm(z, axis=-1, keepdims=True), 1e-12)
  s = jnp.linalg.svd(z, compute_uv=False)
  p = s / jnp.maximum(s.sum(), 1e-12) + 1e-7
  return jnp.mean(jnp.std(normed, axis=0)), jnp.exp(-jnp.sum(p * jnp.log(p)))


def collapse_monitor(model, settings, images, queue=None):
  """state -> {'embedding_std', 'embedding_rank'}: collapse_statistics of the projections of a
  fixed batch of training images (unaugmented, BatchNorm on the batch's statistics). A notice
  names a collapse when the deviation falls below a tenth of 1/sqrt(d), and the method's queue
  (methods.base.Queue) as the likely cause when the loss reads it before it is full."""
  @jax.jit
  def measure(variables, images):
    out, _ = model.apply(variables, augment.eval_view(images, settings), train=True, mutable=['batch_stats'])
    return (*collapse_statistics(out['projection']), out['projection'].shape[-1])

  warned = []

  def monitor(state) -> dict:
    std, rank, dims = (float(x) for x in measure(state.variables, images))
    dims = int(dims)
    if std < 0.1 / math.sqrt(dims) and not warned:
      warned.append(True)
      step = int(state.step)
      cause = 'lower the learning rate or check the method\'s recipe'
      if queue is not None and queue.used_from < queue.full_at and step < queue.full_at:
        cause = (f'the queue is the likely cause: at step {step:,} most of its {queue.rows:,} rows are still the '
                 f'random ones it started with (full at step {queue.full_at:,}); lower config.queue_size or train longer')
      log(f'notice: the embeddings collapse: their deviation {std:.2g} is below a tenth of 1/sqrt({dims}) '
          f'= {1 / math.sqrt(dims):.3g} (rank {rank:.3g}); {cause}')
    return {'embedding_std': std, 'embedding_rank': rank}
  return monitor


def queue_notice(queue, total_steps: int, batch_size: int) -> str:
  """The notice for a queue (methods.base.Queue or None) that this run's total_steps never fill,
  or never read; '' when there is none."""
  if queue is None or max(queue.full_at, queue.used_from) < total_steps:
    return ''
  never_read = queue.used_from >= total_steps
  return (f'notice: the queue of {queue.rows:,} rows is full only at step {queue.full_at:,}'
          + (f' and used from step {queue.used_from:,}' if queue.used_from > queue.full_at else '')
          + f', but this run has {total_steps:,} steps: '
          f'{"the loss never reads it" if never_read else "its random initial rows are never all replaced"}; '
          + ('lower config.queue_start_epochs' if queue.full_at < total_steps else
             f'set config.queue_size={batch_size * max(1, total_steps // 10)} (full within a tenth of the run)')
          + ' or train longer')


def model_line_parts(method, spec, image_size: int, chunks: int, remat: bool) -> tuple:
  """What the model line says of a pretraining run beyond its encoder: the views (data.views
  spec), the batch's chunks, remat, and the method's own (methods.base.Method.describe)."""
  return (views_lib.describe(spec, image_size) + ' views', *([f'batch in {chunks} chunks'] if chunks > 1 else []),
          *(['blocks rematerialised'] if remat else []), *method.describe())


def _monitor_images(inputs, batch: int):
  for chunk, valid, _ in inputs.chunks('train', min(batch, 512)):
    return chunk[:valid] if valid == chunk.shape[0] else chunk


def build_task(config, mesh, inputs, eval_inputs, total_steps: int, make_views=None) -> loop.Task:
  """Model, optimiser, initial state, compiled step, monitor and evaluators for pretraining
  (total_steps: the run's length, runner.loop_settings' total_steps). eval_inputs (None: inputs)
  holds the labelled splits of the monitors; make_views(key, images_uint8) replaces the method's
  views (the benchmark's ablation)."""
  eval_inputs = eval_inputs or inputs
  method = methods.get(config.method)(config, total_steps)
  parallel.check_chunks(config.batch_size, config.batch_chunks, mesh)
  encoder = models.encoder_for(config.model, config.width, config.dtype, config.stem, inputs.image_shape,
                               config.patch_size, config.remat)
  probe = config.online_probe_learning_rate > 0 and inputs.has_labels
  model = method.make_model(encoder, inputs.num_classes if probe else 0)
  first = augment.settings_from_config(config.augment)
  second = augment.settings_from_config(config.augment, config.view2)
  opt = runner.optimizer(config, total_steps, inputs.steps_per_epoch)
  tx = make_tx(opt, config.online_probe_learning_rate, method.param_groups())
  variables = models.init_variables(model, config.seed, inputs.image_shape)
  state = TrainState.create(variables['params'], variables['batch_stats'], tx, config.seed,
                                       method.init_state(variables))
  state = jax.device_put(state, parallel.replicated(mesh))
  views = make_views or method.inputs(first, second)
  loss_fn = pretrain_loss_fn(model, method)
  step_fn = make_train_step(loss_fn, views, tx, method.update, config.inject_nan_at_step)
  available = {'labels'} if eval_inputs.labelled_test else set()
  if probe and eval_inputs.labelled_test and eval_inputs.num_classes == inputs.num_classes:
    available.add('probe')
  evaluators = make_evaluators(config.evals, available)
  queue = method.queue()
  monitor = collapse_monitor(model, first, _monitor_images(inputs, inputs.batch_size), queue)
  notice = queue_notice(queue, total_steps, inputs.batch_size)
  if notice:
    log(notice)
  describe = model_line_parts(method, method.views(first, second), inputs.image_shape[0], config.batch_chunks,
                              config.remat)
  return loop.Task(
      state=state, step_fn=step_fn, inputs=inputs, evaluators=evaluators,
      infer=augment.inference(functools.partial(model.apply, train=False), first),
      summarize=functools.partial(summarize, evaluators=evaluators), schedule=opt.schedule,
      notes={'method': config.method, 'finetune_from_head_layer': model.feature_layer}, eval_inputs=eval_inputs,
      monitor=monitor, model=model, loss_fn=loss_fn, describe=describe,
      meta={'model': models.encoder_spec(encoder, inputs.image_shape, model.projector, model.feature_layer)})


def summarize(record: dict, facts: dict, evaluators=()) -> dict:
  """results.json of a pretraining run, from the checkpoint's record."""
  train = record['train'] or {}
  return {**facts, 'final_loss': train.get('loss'), 'embedding_std': train.get('embedding_std'),
          'embedding_rank': train.get('embedding_rank'), **runner.evaluator_figures(record, evaluators)}


def train_and_evaluate(config, workdir: str) -> dict:
  """Pretrains to config.epochs (resuming from workdir) and writes workdir/results.json."""
  return runner.train_and_evaluate(config, workdir, build_task)
