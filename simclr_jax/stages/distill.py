"""Distillation (SimCLR v2, Chen et al. 2020b, section 2.2): a fine-tuned teacher labels every
training image with its softmax at distill_temperature, and a student learns those soft labels,
optionally mixed with the true labels of the labelled fraction.

    results = train_and_evaluate(config, workdir)   # configs/distill.py

The student is any model and width, from scratch or from a pretraining run (init_from). The
teacher (teacher_from: a finetune, supervised or distill workdir) runs inside the compiled step in
inference mode, on the same augmented batch as the student, so its outputs are never computed on
the host; its variables are part of the train state (saved with every checkpoint, never
updated). Every training image is used, labelled or not: label_fraction keeps the labels of a
class-balanced subset and the rest count as unlabelled (-1); a folder without labels is all
unlabelled, with eval_dataset's test split for the student's test figures. The objective is
(1 - w) * distillation + w * cross-entropy on the labelled images, w = distill_label_weight.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from simclr_jax import models
from simclr_jax.data import augment
from simclr_jax.train import checkpoint
from simclr_jax.stages import classify
from simclr_jax.core import parallel
from simclr_jax.stages import runner
from simclr_jax.train import loop
from simclr_jax.train.step import TrainState, make_train_step
from simclr_jax.core.errors import CheckpointError, DataError
from simclr_jax.evals import make_evaluators
from simclr_jax.models.losses import classification_loss, distillation_loss, top1


def load_teacher(path: str, image_shape, mean, std):
  """(the teacher Classifier, its variables, what results.json says of it) from a classifier
  workdir; one line naming what does not fit this run."""
  variables, meta = checkpoint.restore_classifier(path, role='teacher_from')
  saved, spec = meta['config'], meta['model']
  if tuple(spec['image_shape']) != tuple(image_shape):
    raise CheckpointError(f'teacher_from {path!r} was trained on {spec["image_shape"][0]} px images, this run '
                          f'has {image_shape[0]} px: use the same --config.image_size as the teacher')
  aug = saved['augment']
  if tuple(aug['mean']) != tuple(mean) or tuple(aug['std']) != tuple(std):
    raise CheckpointError(f'teacher_from {path!r} normalised its images with mean {tuple(aug["mean"])} and std '
                          f'{tuple(aug["std"])}: give the student the same --config.augment.mean and .std')
  encoder = models.encoder_from_spec(spec)
  layer = spec.get('feature_layer', 0)
  teacher = models.Classifier(encoder, int(variables['params']['head']['kernel'].shape[-1]),
                              models.head_layers(spec.get('projector'), layer, encoder.dtype))
  info = {'workdir': path, 'stage': saved.get('stage'), 'model': spec['model'], 'width': spec['width'],
          'finetune_from_head_layer': layer, 'label_fraction': saved.get('label_fraction'),
          'dataset': saved.get('dataset')}
  return teacher, jax.tree.map(jnp.asarray, variables), info


def distill_loss_fn(model, teacher, temperature: float, label_weight: float):
  """(1 - w) * the distillation loss against the teacher's logits on the same augmented images
  (inference mode) + w * the cross-entropy on the images that have a label."""
  def loss_fn(params, batch_stats, method_state, x, labels, step):
    out, updated = model.apply({'params': params, 'batch_stats': batch_stats}, x, train=True,
                               mutable=['batch_stats'])
    teacher_logits = teacher.apply(method_state['teacher'], x, train=False)['logits']
    logits = out['logits']
    soft = distillation_loss(logits, teacher_logits, temperature)
    hard = classification_loss(logits, labels)
    loss = (1 - label_weight) * soft + label_weight * hard
    agreement = jnp.mean((jnp.argmax(logits, -1) == jnp.argmax(teacher_logits, -1)).astype(jnp.float32))
    return loss, (updated.get('batch_stats', {}), method_state,
                  {'loss': loss, 'distill_loss': soft, 'label_loss': hard, 'top1': top1(logits, labels),
                   'teacher_agreement': agreement})
  return loss_fn


def build_task(config, mesh, inputs, eval_inputs, total_steps: int) -> loop.Task:
  """The student, its optimiser for a run of total_steps and the teacher's variables in the
  state; eval_inputs (None: inputs) holds the labelled test split."""
  eval_inputs = eval_inputs or inputs
  aug = augment.settings_from_config(config.augment)
  teacher, teacher_vars, teacher_info = load_teacher(config.teacher_from, inputs.image_shape, aug.mean, aug.std)
  for what, n in (('the training data', inputs.num_classes), ('the eval data', eval_inputs.num_classes)):
    if n and n != teacher.num_classes:
      raise DataError(f'teacher_from {config.teacher_from!r} has {teacher.num_classes} classes, {what} '
                      f'has {n}: distil on data with the teacher\'s classes')
  model, variables, spec = classify.build_model(config, inputs.image_shape, teacher.num_classes)
  opt = runner.optimizer(config, total_steps, inputs.steps_per_epoch)
  tx = opt.build(lambda learning_rate, _: opt.make(learning_rate))
  state = TrainState.create(variables['params'], variables['batch_stats'], tx, config.seed,
                                       {'teacher': teacher_vars})
  state = jax.device_put(state, parallel.replicated(mesh))
  loss_fn = distill_loss_fn(model, teacher, config.distill_temperature, config.distill_label_weight)
  step_fn = make_train_step(loss_fn, functools.partial(augment.classifier_views, settings=aug), tx,
                                       inject_nan_at_step=config.inject_nan_at_step)
  evaluators = make_evaluators(config.evals, {'labels'} if eval_inputs.labelled_test else set())
  labelled = int(np.sum(inputs.train_labels() >= 0)) if inputs.num_classes else 0
  notes = {'stage': 'distill', 'label_fraction': config.label_fraction, 'init_from': config.init_from or None,
           'teacher_from': config.teacher_from, 'teacher': teacher_info,
           'student': {'model': config.model, 'width': config.width,
                       'from': 'init_from' if config.init_from else 'scratch'},
           'distill_temperature': config.distill_temperature, 'distill_label_weight': config.distill_label_weight,
           'labelled_examples': labelled, 'train_examples': inputs.num_examples}
  return loop.Task(
      state=state, step_fn=step_fn, inputs=inputs, evaluators=evaluators,
      infer=augment.inference(functools.partial(model.apply, train=False), aug),
      summarize=functools.partial(classify.summarize, evaluators=evaluators), schedule=opt.schedule, notes=notes,
      eval_inputs=eval_inputs, meta={'model': spec}, model=model, loss_fn=loss_fn,
      describe=(f'teacher {teacher_info["model"]} width {teacher_info["width"]:g}',
                *(['blocks rematerialised'] if config.remat else [])))


def train_and_evaluate(config, workdir: str) -> dict:
  """Distils config.teacher_from into the student on every training image; writes results.json."""
  starts = {'teacher_from': config.teacher_from, **({'init_from': config.init_from} if config.init_from else {})}
  return runner.train_and_evaluate(config, workdir, build_task, starts, label_fraction=config.label_fraction,
                                  keep_unlabelled=True)
