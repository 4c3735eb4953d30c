"""What a self-supervised method is, declared in one module: its config fields with their checks,
the views it trains on, its model, its loss, its parameter groups, any state beyond params and
optimiser and an update hook run inside the compiled step.

    method = methods.get('byol')(config, total_steps)   # reads only its own fields
    spec = method.views(first, second)                   # data.views groups: {'global': 2 x 32 px}
    make_inputs = method.inputs(first, second)           # (key, uint8 images) -> the step's inputs (the views)
    model = method.make_model(encoder, probe_classes=10)
    state = method.init_state(variables)                 # e.g. the EMA target network
    out, stats = method.forward(model, variables, views)  # {group: {output: [n, B, ...]}}: apply_views
    loss, state, metrics = method.loss(model, out, state, views, step, params)
    state = method.update(state, params, step)           # after the optimiser step (EMA)
    method.param_groups()                                # {'predictor': Group(constant_lr=True)}

A multi-crop method subclasses MultiCrop as well: its fields local_crops, local_crop_size and
local_view add that many small crops ('local') to the two global views.

A subclass sets NAME and FIELDS (name -> Field: its default, its check, whether it defines a run;
configs/<NAME>.py sets its recipe) and overrides what differs from the defaults here: two
same-size views, a Dense-ReLU-Dense projector, no predictor, no state, no update. The views reach
the loss as a dict of stacked groups (data.views), and so do the model's outputs.
"""
from __future__ import annotations

import copy
import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from simclr_jax import models
from simclr_jax.core.chunks import map_chunks
from simclr_jax.core.errors import ConfigError
from simclr_jax.data import augment, views as views_lib


def fail(field: str, value, fix: str):
  raise ConfigError(f'config.{field}={value!r} is invalid: {fix}')


# Checks of one field's value: '' when it is fine, else what to do.
def positive(value) -> str:
  return '' if value > 0 else 'it must be greater than 0'


def non_negative(value) -> str:
  return '' if value >= 0 else 'it must be 0 or more'


def unit_interval(value) -> str:
  return '' if 0 <= value <= 1 else 'use a value in [0, 1]'


def layer_sizes(value) -> str:
  return '' if len(value) >= 1 and min(value) >= 1 else 'use positive layer sizes such as (2048, 128)'


def whole_number(value) -> str:
  return '' if int(value) == value and value >= 0 else 'use a whole number, 0 or more'


def scale_range(value) -> str:
  ok = len(value) == 2 and 0 < value[0] <= value[1] <= 1
  return '' if ok else 'use (min, max) with 0 < min <= max <= 1, shares of the image area'


def check_queue_size(config) -> None:
  """ConfigError unless config.queue_size holds whole global batches (a queue that takes a whole
  batch each step, first in, first out)."""
  if config.queue_size % config.batch_size:
    fail('queue_size', config.queue_size,
         f'use a multiple of batch_size={config.batch_size} (a whole batch replaces the oldest rows each step)')


def fifo_queue(rows: int, batch_size: int) -> Queue:
  """A first-in-first-out queue of `rows` that takes a whole global batch each step and is read
  from the first step (MoCo v2+'s keys, NNCLR's support set)."""
  return Queue(rows, -(-rows // batch_size))


def enqueue(queue, pointer, rows):
  """(queue with `rows` [..., B, D] written at rows pointer..pointer + B of queue [..., K, D], the
  next pointer): first in, first out, the oldest rows out (check_queue_size keeps K a multiple of B)."""
  size, batch = queue.shape[-2], rows.shape[-2]
  queue = jax.lax.dynamic_update_slice(queue, rows.astype(queue.dtype), (0,) * (queue.ndim - 2) + (pointer, 0))
  return queue, (pointer + batch) % size


class Field(NamedTuple):
  """A config field a method adds: its default, a check of its value (value -> '' or the fix),
  whether it defines a run (a workdir resumes only with the value it was trained with), and what
  it means (the configuration reference; a field taken from a base class with another default
  keeps its doc)."""
  default: Any
  check: Callable | None = None
  defines_run: bool = False
  doc: str = ''


class Queue(NamedTuple):
  """A method's queue of past embeddings (Method.queue): its rows, the step from which every row
  holds an embedding of this run (its initial rows pushed out), and the step from which the loss
  reads it."""
  rows: int
  full_at: int
  used_from: int = 0


class Group(NamedTuple):
  """How the optimiser treats a parameter group (a module of the model by its path: 'predictor',
  'projector/prototypes'):
  at the peak learning rate throughout (no warmup or decay), and/or left alone for the first
  frozen_steps steps (its updates and optimiser state held, as DINO holds its last layer)."""
  constant_lr: bool = False
  frozen_steps: int = 0


def l2_normalize(x, eps: float = 1e-12):
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def apply_views(model, variables: dict, views: dict, per_view: bool, **kwargs):
  """({group: {output: [n, B, ...]}}, updated batch_stats) of the model in training mode on each
  group of views ({group: [n, B, H, W, 3]}). A group goes through the model in one call, so
  BatchNorm normalises its n views together; with per_view each view goes on its own (its own
  statistics, the running averages updated once per view, as separate forward calls do in
  PyTorch). Groups and views go in order, threading the running averages through."""
  out = {}
  for name, x in views.items():
    n, b = x.shape[:2]
    # One call: the images' views image by image (rows k * n + i), as the two-view step always held them.
    parts = [x[i] for i in range(n)] if per_view else [jnp.swapaxes(x, 0, 1).reshape((b * n,) + x.shape[2:])]
    outs = []
    for part in parts:
      y, updated = model.apply(variables, part, train=True, mutable=['batch_stats'], **kwargs)
      variables = {**variables, 'batch_stats': updated.get('batch_stats', {})}
      outs.append(y)
    if per_view:
      out[name] = jax.tree.map(lambda *a: jnp.stack(a), *outs)
    else:
      out[name] = jax.tree.map(lambda a: jnp.swapaxes(a.reshape((b, n) + a.shape[1:]), 0, 1), outs[0])
  return out, variables['batch_stats']


def probe_view(out: dict):
  """The outputs the online probe reads: the first view of the 'global' group (every method's
  first; by name, since a pytree's dict comes back from jax.lax.map with its keys sorted)."""
  return jax.tree.map(lambda a: a[0], out['global'])


class Method:
  NAME = ''
  PAPER = ''  # authors, year, title (the --list and the configuration reference)
  FIELDS: dict = {'projection_dims': Field((2048, 128), layer_sizes, defines_run=True,
                                           doc="the projector's layer sizes (any depth; the last is the embedding the "
                                               "loss reads)")}
  # Each view through the network on its own (BatchNorm statistics per view), as the authors' code
  # of MoCo v3, BYOL, SimSiam, Barlow Twins and VICReg and solo-learn do; SimCLR's reference runs
  # both views as one batch.
  PER_VIEW_BATCHNORM = True

  def __init__(self, config, total_steps: int = 1):
    self.config = {k: config[k] for k in ('finetune_from_head_layer', *self.FIELDS)}
    self.chunks = config.batch_chunks  # the step's batch in chunks (core.chunks): its target networks' too
    self.batch_size = config.batch_size  # the global batch (a queue takes one each step)
    self.total_steps = max(1, total_steps)
    self.steps_per_epoch = max(1, round(self.total_steps / config.epochs))  # for fields in epochs

  @classmethod
  def defaults(cls) -> dict:
    """The method's fields and their defaults (config_base adds them to a pretraining config; a
    copy of each, so no config shares a nested field with another)."""
    return {name: copy.deepcopy(field.default) for name, field in cls.FIELDS.items()}

  @classmethod
  def run_defining(cls) -> tuple:
    """The method's fields that define a run (workdir's resume check)."""
    return tuple(name for name, field in cls.FIELDS.items() if field.defines_run)

  @classmethod
  def validate(cls, config) -> None:
    """ConfigError for a bad value of the method's fields (before anything runs): each field's
    check, then the checks across fields (cross_check)."""
    for name, field in cls.FIELDS.items():
      problem = field.check(config[name]) if field.check else ''
      if problem:
        fail(name, tuple(config[name]) if isinstance(config[name], (list, tuple)) else config[name], problem)
    cls.cross_check(config)

  @classmethod
  def cross_check(cls, config) -> None:
    hidden = len(config.projection_dims) - 1
    if config.finetune_from_head_layer > hidden:
      fail('finetune_from_head_layer', config.finetune_from_head_layer,
           f'the projector has {len(config.projection_dims)} layers (projection_dims='
           f'{tuple(config.projection_dims)}), of which {hidden} hidden: use a value from 0 to {hidden}')

  # The views.
  def views(self, first, second) -> tuple:
    """The data.views spec, from the config's first and second view settings (augment, view2)."""
    return views_lib.two_views(first, second)

  def inputs(self, first, second) -> Callable:
    """(key, uint8 images [B, H, W, 3]) -> the step's inputs, made on the device: the views of
    views() ({group: [n, B, size, size, 3]}); a method may add what else it draws per step (MAE's
    mask keys), each image's on the second axis as the views ([n, B, ...]: core.chunks cuts the
    batch there)."""
    return functools.partial(views_lib.make_views, spec=self.views(first, second))

  def forward(self, model, variables: dict, inputs: dict):
    """({group: {output: [n, B, ...]}}, updated batch_stats): the online model in training mode on
    the inputs, each group in one call or view by view (PER_VIEW_BATCHNORM). With batch_chunks > 1
    it runs on each chunk of the batch (core.chunks): rows meet only in BatchNorm here, everything
    that couples the batch's rows (negatives, queues, centres) belongs in loss()."""
    return apply_views(model, variables, inputs, self.PER_VIEW_BATCHNORM)

  # The model.
  def projector(self, dtype) -> models.MLPHead:
    return models.MLPHead(tuple(self.config['projection_dims']), dtype=dtype)

  def predictor(self, dtype) -> models.MLPHead | None:
    return None

  def make_model(self, encoder, probe_classes: int = 0) -> models.PretrainModel:
    """The online model; its feature_layer is the config's finetune_from_head_layer."""
    return models.PretrainModel(encoder=encoder, projector=self.projector(encoder.dtype),
                                predictor=self.predictor(encoder.dtype), probe_classes=probe_classes,
                                feature_layer=self.config['finetune_from_head_layer'])

  # The optimiser.
  def param_groups(self) -> dict:
    """{module path ('predictor', 'projector/prototypes'): Group} for the modules the optimiser
    treats apart (the rest: as configured)."""
    return {}

  # State beyond params and optimiser, and its update inside the compiled step.
  def queue(self) -> Queue | None:
    """The method's queue of past embeddings, if it keeps one (the model line names it; a notice
    says when the run ends before it is full)."""
    return None

  def describe(self) -> list:
    """What the model line adds for this method (its queue, a decoder's size)."""
    q = self.queue()
    return [f'queue of {q.rows:,} rows full at step {q.full_at:,}'
            + (f' and used from step {q.used_from:,}' if q.used_from > q.full_at else '')] if q else []

  def init_state(self, variables: dict) -> dict:
    return {}

  def update(self, state: dict, params, step) -> dict:
    return state

  def loss(self, model, out: dict, state: dict, views: dict, step, params=None):
    """(loss, state, metrics) from the online model's outputs on the views ({group: {output:
    [n, B, ...]}}: out['global']['projection'][1] is every image's second view's projection);
    params, the online model's parameters, for a loss that runs part of it again (SwAV scores
    its queue with the current prototypes)."""
    raise NotImplementedError


class MultiCrop(Method):
  """Multi-crop (SwAV, section 3.2; DINO): the two global views of the config's augment and view2,
  and local_crops small crops of local_crop_size px, each with the first view's settings changed
  by local_view (an AugmentSettings override, as view2: the crops' scale range, their strengths);
  local_crops=0 trains on the two global views alone. Mix it in before the method's base class:
  class DINO(MultiCrop, MomentumMethod)."""
  FIELDS = {**Method.FIELDS,
            'local_crops': Field(0, whole_number, defines_run=True,
                                 doc='multi-crop: how many small crops beside the two global views (0: none)'),
            'local_crop_size': Field(18, positive, defines_run=True, doc="multi-crop: the small crops' size in px"),
            'local_view': Field(views_lib.overrides_config(crop_scale=(0.08, 0.5)),
                                doc="multi-crop: the small crops' differences from augment (as view2 is the second "
                                    "view's), e.g. local_view.crop_scale")}

  @classmethod
  def cross_check(cls, config) -> None:
    super().cross_check(config)
    if config.local_crops and models.is_vit(config.model) and config.local_crop_size % config.patch_size:
      fail('local_crop_size', config.local_crop_size, f'a ViT cuts whole patches: use a multiple of '
           f'patch_size={config.patch_size}, such as {config.local_crop_size // config.patch_size * config.patch_size}')

  def views(self, first, second) -> tuple:
    """{'global': the two views, 'local': local_crops crops} (no 'local' group without them)."""
    spec = super().views(first, second)
    n = self.config['local_crops']
    if not n:
      return spec
    local = augment.overridden(first, self.config['local_view'])
    return spec + (views_lib.Crops('local', self.config['local_crop_size'], (local,) * n),)


def unit_or_less(value) -> str:
  return '' if 0 <= value <= 1 else 'use a decay in [0, 1] (1.0: the target stops moving at the end)'


class MomentumMethod(Method):
  """A method with an EMA target network (encoder and projector). Its decay tau rises from
  base_tau to final_tau on a cosine over the run (BYOL, section 3.3): at step k of K,
  tau = final - (final - base) * (cos(pi * k / K) + 1) / 2, and after the optimiser step the
  target's parameters become tau * target + (1 - tau) * online. Its BatchNorm statistics come from
  its own forward passes in training mode, as in BYOL's and solo-learn's code."""
  FIELDS = {**Method.FIELDS,
            'base_tau': Field(0.99, unit_or_less,
                              doc="the EMA target's decay at the first step (it rises on a cosine to final_tau)"),
            'final_tau': Field(1.0, unit_or_less, doc="the EMA target's decay at the last step")}
  TARGET = ('encoder', 'projector')

  @classmethod
  def cross_check(cls, config) -> None:
    super().cross_check(config)
    if not config.base_tau <= config.final_tau:
      fail('base_tau', config.base_tau, f'use 0 <= base_tau <= final_tau (final_tau={config.final_tau})')

  def init_state(self, variables: dict) -> dict:
    """The target starts as a copy of the online encoder and projector (its own buffers; a
    projector without BatchNorm has no statistics)."""
    return {'target': {c: jax.tree.map(lambda x: jnp.array(x, copy=True),
                                       {k: variables[c][k] for k in self.TARGET if k in variables[c]})
                       for c in ('params', 'batch_stats')}}

  def tau(self, step):
    base, final = self.config['base_tau'], self.config['final_tau']
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / self.total_steps, 1.0)
    return final - (final - base) * (jnp.cos(math.pi * progress) + 1) / 2

  def update(self, state: dict, params, step) -> dict:
    tau = self.tau(step)
    online = {k: params[k] for k in self.TARGET}
    averaged = jax.tree.map(lambda t, o: tau * t + (1 - tau) * o, state['target']['params'], online)
    return {**state, 'target': {**state['target'], 'params': averaged}}

  def target_projections(self, model, state: dict, views: dict):
    """({group: stop-gradient target projections [n, B, D]}, state with the target's new BatchNorm
    statistics)."""
    target = state['target']
    forward = lambda variables, views: apply_views(model, variables, views, self.PER_VIEW_BATCHNORM, target=True)
    out, stats = map_chunks(forward, target, views, self.chunks)  # in the online network's chunks
    state = {**state, 'target': {**target, 'batch_stats': stats}}
    return {name: jax.lax.stop_gradient(o['projection']) for name, o in out.items()}, state
