"""What every stage does around its own model: the data described once, checked against the run
already in the workdir and placed; the first log lines; the loop's settings; results.json's
evaluator figures.

    data = prepare_data(config, workdir, mesh, label_fraction=0.1, require_labels=True)
    data.source.image_size, data.inputs, data.eval_inputs
    settings = loop_settings(config, data.inputs.steps_per_epoch, meta={'data': ...})
    opt = optimizer(config, settings.total_steps, settings.steps_per_epoch)
    tx = opt.build(lambda learning_rate, peak: opt.make(learning_rate))  # in build_task; schedule as data
    task = build_task(config, mesh, data.inputs, data.eval_inputs, settings.total_steps)
    results = train_and_evaluate(config, workdir, build_task, {'init_from': path}, label_fraction=0.1)
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import optax

from simclr_jax import models
from simclr_jax.train import checkpoint
from simclr_jax.data import pipeline, registry, sources
from simclr_jax.train import optim
from simclr_jax.core import parallel
from simclr_jax.train import loop
from simclr_jax.stages import workdir as workdir_lib
from simclr_jax.core.errors import DataError
from simclr_jax.core.log import log, plural


@dataclasses.dataclass
class Data:
  source: sources.Source
  eval_source: sources.Source | None
  inputs: object                  # pipeline.DeviceInputs or StreamInputs
  eval_inputs: object

  @property
  def identity(self) -> dict:
    """What a checkpoint remembers of the data (workdir.check_data compares it on resume)."""
    return {role: s.identity for role, s in self.sources.items()}

  @property
  def sources(self) -> dict:
    return {role: s for role, s in (('dataset', self.source), ('eval_dataset', self.eval_source)) if s}


def log_setup(dtype: str) -> None:
  """The first log line: devices and compute dtype."""
  log(f'compute dtype {models.resolve_dtype(dtype)} (config.dtype={dtype!r}) on '
      f'{jax.device_count()} {jax.devices()[0].platform} device(s)')


def log_model(spec: dict, requested_stem: str, inputs, parts=(), epochs: bool = True) -> None:
  """The line that says what trains: the encoder (which stem the image size chose, a ViT's
  patches), `parts` (a task's `describe`: views, chunks, a queue), the images and, for a stage
  that trains by epochs, the steps per epoch (spec: a task's meta['model'])."""
  size = inputs.image_shape[0]
  if spec['stem'] == 'patch':
    grid = size // spec['patch_size']
    encoder = f'{spec["model"]} width {spec["width"]:g}, {spec["patch_size"]} px patches ({grid} x {grid} of {size} px images)'
  else:
    encoder = (f'{spec["model"]} width {spec["width"]:g}, stem {spec["stem"]} (config.stem={requested_stem!r}, '
               f'{size} px images)')
  steps = [f'{plural(inputs.steps_per_epoch, "step")} per epoch'] if epochs else []
  log(', '.join([encoder, *parts, plural(inputs.num_examples, 'training image'), *steps]))


def _check_labelled(source: sources.Source, rows, field: str, value: str) -> None:
  problems = []
  labels = source.labels('train') if source.labelled else np.full(source.size('train'), -1)
  labels = labels if rows is None else labels[rows]
  if not len(labels) or not np.all(labels >= 0):
    problems.append(f'{int(np.sum(labels < 0))} of its {plural(len(labels), "training image")} have no label')
  if not source.has('test') or not source.labelled:
    problems.append('it has no labelled test split')
  if problems:
    what = 'a classifier stage needs labels' if field == 'dataset' else 'the monitors need labelled train and test splits'
    raise DataError(f'config.{field}={value!r}: {what}, but {" and ".join(problems)}: use a labelled '
                    'dataset, folder (class sub-folders) or split (for STL-10: train)')


def prepare_data(config, workdir: str, mesh, *, label_fraction: float = 1.0, require_labels: bool = False,
                 small_set_notice: bool = True, keep_unlabelled: bool = False) -> Data:
  """The config's dataset (a class-balanced label_fraction of its training split, the first
  train_limit images; with keep_unlabelled, every image, those outside the fraction without a
  label) and eval_dataset, described, checked against the checkpoint's record of its data, then
  placed as config.data_placement says."""
  source = registry.get(config.dataset, config.data_dir, image_size=config.image_size,
                        train_split=config.train_split, test_split=config.test_split,
                        test_fraction=config.test_fraction)
  eval_source = None
  if config.eval_dataset:
    eval_source = registry.get(config.eval_dataset, config.data_dir, image_size=source.image_size,
                               test_fraction=config.test_fraction)
    _check_labelled(eval_source, None, 'eval_dataset', config.eval_dataset)
  data = Data(source, eval_source, None, None)
  workdir_lib.check_data(workdir, data.sources, config.allow_data_change)
  if keep_unlabelled:
    rows = sources.select_rows(source, config.train_limit)
    if source.labelled and label_fraction < 1.0:
      source = data.source = sources.keep_labels(source, sources.select_rows(
          source, config.train_limit, label_fraction, config.label_seed))
  else:
    rows = sources.select_rows(source, config.train_limit, label_fraction, config.label_seed)
  if require_labels:
    _check_labelled(source, rows, 'dataset', config.dataset)
  data.inputs, data.eval_inputs = pipeline.make_inputs(
      source, rows, config.data_placement, mesh, config.batch_size, config.seed, eval_source=eval_source,
      workers=config.input_workers, max_bad_fraction=config.max_bad_fraction, small_set_notice=small_set_notice)
  workdir_lib.write_manifest(workdir, data.sources)
  return data


def loop_settings(config, steps_per_epoch: int, meta: dict) -> loop.LoopSettings:
  """The loop's settings from the config; meta is saved with each checkpoint (the config is
  added here). Its total_steps is what the stage's task and optimiser are built for."""
  return loop.LoopSettings(
      epochs=config.epochs, steps_per_epoch=steps_per_epoch,
      eval_batch_size=config.eval_batch_size, log_every_steps=config.log_every_steps,
      log_every_seconds=config.log_every_seconds, checkpoint_every_epochs=config.checkpoint_every_epochs,
      keep_checkpoints=config.keep_checkpoints, skip_nonfinite=config.skip_nonfinite,
      meta={'config': json.loads(config.to_json()), **meta})


@dataclasses.dataclass(frozen=True)
class Optimizer:
  """A stage's optimiser settings: make(learning_rate) -> the config's optimiser at that
  learning rate (a schedule or a constant) and the warmup-cosine schedule (optim.Schedule)."""
  make: object
  schedule: optim.Schedule

  @property
  def peak(self) -> float:
    return self.schedule.peak

  def build(self, groups) -> optax.GradientTransformation:
    """groups(learning_rate, peak) -> the stage's optimiser over its parameter groups (make's
    optimiser for those the schedule trains), with the schedule held as data (optim.scheduled)."""
    return optim.scheduled(groups, self.schedule)


def optimizer(config, total_steps: int, steps_per_epoch: int) -> Optimizer:
  """The config's optimiser and learning-rate schedule for a run of total_steps: gradients clipped
  to gradient_clip_norm (their global norm over the parameters of the group the optimiser holds:
  the model's, apart from the online probe and a method's own groups), layer_decay applied."""
  peak = optim.peak_learning_rate(config.learning_rate, config.batch_size, config.lr_scaling)
  schedule = optim.make_schedule(peak, total_steps, config.warmup_epochs, steps_per_epoch)
  lars = optim.Lars(config.lars_eta, config.lars_trust_ratio, config.lars_clip, config.lars_lr_in_momentum)
  decay = config.weight_decay
  if config.weight_decay_end is not None:  # a per-step schedule (DINO's): cosine from weight_decay to it
    decay = optim.cosine_between(config.weight_decay, config.weight_decay_end, total_steps)
  clip = [optax.clip_by_global_norm(config.gradient_clip_norm)] if config.gradient_clip_norm else []
  layers = [optim.layer_decay(config.layer_decay)] if config.layer_decay < 1 else []

  def make(lr):
    tx = optim.make_optimizer(config.optimizer, lr, config.momentum, decay, lars, config.adam_beta2)
    return optax.chain(*clip, tx, *layers) if clip or layers else tx  # without them, the state as before
  return Optimizer(make, schedule)


def evaluator_figures(record: dict, evaluators) -> dict:
  """For results.json: each evaluator's latest figures ('<name>_<metric>'), '<name>_history'
  ([[epoch, top1], ...]), and 'protocols' and 'labels' of the figures that have a value."""
  from simclr_jax.evals import describe
  out = {}
  for e in evaluators:
    for metric in e.metrics:
      rows = [r for r in record['evals'] if e.key(metric) in r]
      out[e.key(metric)] = rows[-1][e.key(metric)] if rows else None
    out[f'{e.name}_history'] = [[r['epoch'], r[e.key()]] for r in record['evals'] if e.key() in r]
  info = {k: v for k, v in describe(evaluators).items() if out.get(k) is not None}
  out['protocols'] = {k: v['protocol'] for k, v in info.items()}
  out['labels'] = {k: v['label'] for k, v in info.items()}
  return out


def train_and_evaluate(config, workdir: str, build_task, checkpoints: dict | None = None, finish=None,
                       **data_options) -> dict:
  """What every stage does: the finished run's results.json if there is one; else the
  checkpoints it starts from looked up ({role: path}, before the data is read), the data
  prepared (prepare_data's options), build_task(config, mesh, inputs, eval_inputs, total_steps)
  and the loop -- or finish(task), for a stage that fits rather than trains (it writes
  results.json, which is then all that marks it finished)."""
  mesh = parallel.make_mesh()
  parallel.check_batch_size(config.batch_size, mesh)
  done = loop.finished_results(workdir, config.epochs) if finish is None else kept_results(workdir)
  if done is not None:
    log_summary(config, workdir, done)
    return done
  for role, path in (checkpoints or {}).items():
    checkpoint.find_checkpoint(path, role)
  log_setup(config.dtype)
  data = prepare_data(config, workdir, mesh, **data_options)
  settings = loop_settings(config, data.inputs.steps_per_epoch, {'data': data.identity})
  task = build_task(config, mesh, data.inputs, data.eval_inputs, settings.total_steps)
  log_model(task.meta['model'], config.stem, data.inputs, task.describe, epochs=finish is None)
  workdir_lib.mark_started(workdir)  # from here a failure keeps what the run wrote
  results = finish(task) if finish is not None else loop.run(task, workdir, settings)
  log_summary(config, workdir, results)
  return results


def kept_results(workdir: str) -> dict | None:
  """results.json of a stage without checkpoints, with a notice; None when there is none."""
  path = os.path.join(workdir, 'results.json')
  if not os.path.exists(path):
    return None
  log(f'the run in {workdir} is complete: results.json is kept as it is')
  with open(path) as f:
    return json.load(f)


def _percent(x) -> str:
  return f'{100 * x:.1f}%'


def summary(config, workdir: str, results: dict) -> list:
  """The lines that end a run: what trained and how fast, its main figures, where results.json is
  and the command to run next."""
  stage = config.stage
  what = config.method if stage == 'pretrain' else stage
  rate = results.get('images_per_second')
  trained = (f'{plural(results.get("epochs") or 0, "epoch")} ({plural(results.get("steps") or 0, "step")}) in '
             f'{results.get("train_seconds") or 0:.0f} s' + (f' at {rate:,.0f} images/s' if rate else '')
             if results.get('steps') else 'fitted on frozen features')
  head = f'done: {what} on {config.dataset}, {trained}'
  if results.get('final_loss') is not None:
    head += f', final loss {results["final_loss"]:.4g}'
  figures = [f'{label} {_percent(results[key])}' for key, label in (results.get('labels') or {}).items()
             if key != 'test_top1' and results.get(key) is not None]
  if results.get('test_top1') is not None:
    best = (f' (best {_percent(results["best_test_top1"])} at epoch {results["best_epoch"]})'
            if results.get('best_epoch') and results.get('best_test_top1') != results['test_top1'] else '')
    figures.insert(0, f'test top-1 {_percent(results["test_top1"])}{best}')
  lines = [head, f'figures: {", ".join(figures)}' if figures else 'figures: none (no labelled test split)',
           f'results: {os.path.join(workdir, "results.json")}']
  run = 'python -m simclr_jax.main --config=configs/{}.py --workdir={} --config.{}={}'
  base = workdir.rstrip('/')
  if stage == 'pretrain':
    lines.append('next: ' + run.format('linear_eval', f'{base}_linear', 'init_from', workdir) + ' (or configs/finetune.py)')
  elif stage in ('finetune', 'supervised', 'distill'):
    lines.append('next: ' + run.format('distill', f'{base}_distill', 'teacher_from', workdir)
                 + f' (or the encoder as a file: simclr_jax.export_encoder({workdir!r}, \'encoder.safetensors\'))')
  return lines


def log_summary(config, workdir: str, results: dict) -> None:
  for line in summary(config, workdir, results):
    log(line)
