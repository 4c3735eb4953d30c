"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"):
self-distillation without labels. A student network on every crop learns to give the output
distribution an EMA teacher gives on the global crops; the teacher's outputs are centred (an EMA
of their batch mean) and sharpened (a low temperature), which together keep the outputs from
collapsing. Recipes: configs/dino.py (lightly's CIFAR-10 recipe, two views), configs/dino_multicrop.py (2
global + 6 local).

    python -m simclr_jax.main --config=configs/dino.py --config.local_crops=6

The head (DINOHead): Dense-GELU layers (projection_dims: the hidden sizes, then the bottleneck),
the bottleneck L2-normalised, then num_prototypes weight-normalised prototypes with their norms
fixed at 1 (norm_last_layer), so the logits are cosines. With s_v the student's logits of view v
(2 global views, then the local ones), t_i the teacher's of global view i, C the centre and
T_s, T_t the temperatures (Eq. 3 and Algorithm 1):
    P_t(i) = softmax((t_i - C) / T_t),  P_s(v) = softmax(s_v / T_s)
    loss = mean over the pairs (i, v), i in {1, 2}, v != i, of mean_b -sum_k P_t(i) log P_s(v)
    C <- m C + (1 - m) mean of t over both global views and the global batch (after the loss).
T_t rises linearly from warmup_teacher_temperature to teacher_temperature over the first
warmup_teacher_temperature_epochs epochs (one value an epoch); the prototypes stay as initialised
for the first freeze_prototypes_epochs epochs. Each group of same-size crops goes through the
networks in one call, as DINO's MultiCropWrapper runs them; the teacher sees the global crops only.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.methods.base import (Field, Group, MomentumMethod, MultiCrop, fail, layer_sizes,
                                     positive, unit_interval, whole_number)

_TRUNC_NORMAL = nn.initializers.truncated_normal(0.02)  # DINO's trunc_normal_(std=.02), biases 0


class DINOHead(nn.Module):
  """Dense layers dims[:-1] (GELU between them, BatchNorm before each GELU with norm), the last of
  them the bottleneck, then dims[-1] prototypes (models.Prototypes: cosines with unit columns).
  Returns (logits float32 [B, dims[-1]], hiddens) as models.MLPHead does."""
  dims: Sequence[int]
  norm: bool = False
  dtype: Any = jnp.float32
  last_norm: str = 'none'

  @nn.compact
  def __call__(self, h, train: bool = True):
    hiddens = [h]
    mlp = self.dims[:-1]
    for i, d in enumerate(mlp):
      h = nn.Dense(d, dtype=self.dtype, kernel_init=_TRUNC_NORMAL, name=f'dense_{i}')(h)
      if i < len(mlp) - 1:
        if self.norm:
          h = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=self.dtype,
                           name=f'norm_{i}')(h)
        h = nn.gelu(h, approximate=False)
      hiddens.append(h.astype(jnp.float32))
    return models.Prototypes(self.dims[-1], name='prototypes')(h), hiddens


def dino_loss(student, teacher, center, student_temperature, teacher_temperature):
  """The mean cross-entropy over the (teacher view, other student view) pairs of the centred,
  sharpened teacher distribution with the student's; student [V, B, K] (the 2 global views
  first), teacher [2, B, K], center [K]; float32."""
  targets = jax.nn.softmax(jax.lax.stop_gradient(teacher - center) / teacher_temperature, axis=-1)
  log_student = jax.nn.log_softmax(student.astype(jnp.float32) / student_temperature, axis=-1)
  terms = [-jnp.mean(jnp.sum(targets[i] * log_student[v], axis=-1))
           for i in range(teacher.shape[0]) for v in range(student.shape[0]) if v != i]
  return sum(terms) / len(terms)


class DINO(MultiCrop, MomentumMethod):
  NAME = 'dino'
  PAPER = 'Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers (DINO)'
  PER_VIEW_BATCHNORM = False
  # Defaults: the paper's (section 3.1 and appendix: the teacher temperature's warm-up from 0.04 to
  # 0.07 over 30 epochs, tau 0.996 -> 1, the prototypes frozen for the first epoch); configs/dino.py
  # sets lightly's CIFAR-10 recipe.
  FIELDS = {**MomentumMethod.FIELDS, **MultiCrop.FIELDS,
            'projection_dims': Field((2048, 2048, 256), layer_sizes, defines_run=True),
            'num_prototypes': Field(65536, positive, defines_run=True,
                                    doc="the weight-normalised prototypes of the last layer (the head's output size)"),
            'head_norm': Field(False, defines_run=True, doc="BatchNorm in the head's hidden layers"),
            'base_tau': MomentumMethod.FIELDS['base_tau']._replace(default=0.996),
            'student_temperature': Field(0.1, positive, doc="the student's softmax temperature"),
            'teacher_temperature': Field(0.07, positive, doc="the teacher's softmax temperature after its warm-up"),
            'warmup_teacher_temperature': Field(0.04, positive, doc="the teacher's temperature at the first step"),
            'warmup_teacher_temperature_epochs': Field(30, whole_number,
                                                       doc="epochs over which the teacher's temperature rises "
                                                           "linearly to teacher_temperature"),
            'center_momentum': Field(0.9, unit_interval, doc="the momentum of the teacher outputs' centre"),
            'freeze_prototypes_epochs': Field(1, whole_number,
                                              doc='the prototypes left alone for the first epochs (their updates and '
                                                  'momentum held)')}

  @classmethod
  def cross_check(cls, config) -> None:
    if config.finetune_from_head_layer:
      fail('finetune_from_head_layer', config.finetune_from_head_layer,
           "DINO's head (GELU, a normalised bottleneck, prototypes) is not a classifier's start: use 0")
    super().cross_check(config)

  def projector(self, dtype):
    return DINOHead((*self.config['projection_dims'], self.config['num_prototypes']), norm=self.config['head_norm'],
                    dtype=dtype)

  def param_groups(self) -> dict:
    return {'projector/prototypes': Group(frozen_steps=self.config['freeze_prototypes_epochs'] * self.steps_per_epoch)}

  def init_state(self, variables: dict) -> dict:
    return {**super().init_state(variables), 'center': jnp.zeros((self.config['num_prototypes'],), jnp.float32)}

  def teacher_temperature(self, step):
    """The warm-up's value for the step's epoch, then teacher_temperature."""
    c = self.config
    epochs = c['warmup_teacher_temperature_epochs']
    epoch = jnp.asarray(step, jnp.int32) // self.steps_per_epoch
    rising = c['warmup_teacher_temperature'] + (c['teacher_temperature'] - c['warmup_teacher_temperature']) * (
        epoch / max(epochs - 1, 1))
    return jnp.where(epoch < epochs, rising, c['teacher_temperature'])

  def loss(self, model, out, state, views, step, params=None):
    teacher, state = self.target_projections(model, state, {'global': views['global']})
    teacher = teacher['global']
    student = jnp.concatenate([out[g]['projection'] for g in ('global', 'local') if g in out])
    temperature = self.teacher_temperature(step)
    loss = dino_loss(student, teacher, state['center'], self.config['student_temperature'], temperature)
    m = self.config['center_momentum']
    center = m * state['center'] + (1 - m) * jnp.mean(teacher, axis=(0, 1))
    return loss, {**state, 'center': center}, {'tau': self.tau(step), 'teacher_temperature': temperature}


METHOD = DINO
