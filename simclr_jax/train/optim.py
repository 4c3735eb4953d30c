"""Learning-rate schedules, optimisers, weight-decay masks, and one optimiser per parameter group.

    peak = peak_learning_rate(0.3, batch_size=512, scaling='linear')
    schedule = make_schedule(peak, total_steps=200 * 97, warmup_epochs=10, steps_per_epoch=97)
    schedule(100)                                        # the learning rate at step 100
    tx = make_optimizer('sgd', schedule, momentum=0.9, weight_decay=5e-4)
    tx = make_optimizer('adamw', schedule, 0.9, cosine_between(0.04, 0.4, total_steps))  # DINO's decay schedule
    tx = optax.chain(optax.clip_by_global_norm(3.0), make_optimizer('adamw', schedule, 0.9, 0.05, beta2=0.95),
                     layer_decay(0.75))                  # a ViT's fine-tune
    tx = partition({'model': tx, 'frozen': optax.set_to_zero()}, {'encoder': 'frozen', 'head': 'model'})
    tx = scheduled(lambda lr, peak: make_optimizer('lars', lr, 0.9, 1e-6), schedule)  # schedule as data
    tx = make_optimizer('lars', schedule, 0.9, 1e-6, Lars(0.02, 'sum_of_norms', clip=True, lr_in_momentum=False))
    opt_state = with_schedule_of(restored_opt_state, tx.init(params))  # a resume follows the config
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from simclr_jax.core.log import log

# Warmup longer than this share of the run is shortened to it (a short run just works).
MAX_WARMUP_SHARE = 0.25


def epochs_to_steps(epochs: float, steps_per_epoch: int) -> int:
  """The one place durations in epochs become steps (a run's length, its warmup, a checkpoint's
  record of its length)."""
  return int(round(epochs * steps_per_epoch))


def peak_learning_rate(base_lr: float, batch_size: int, scaling: str) -> float:
  """base_lr is for a batch of 256: 'linear' scales by B/256, 'sqrt' by sqrt(B/256), 'none' keeps it."""
  ratio = batch_size / 256
  return base_lr * {'linear': ratio, 'sqrt': math.sqrt(ratio), 'none': 1.0}[scaling]


def warmup_cosine(step, peak, warmup_steps, total_steps):
  """Linear warmup from 0 to peak over warmup_steps, then cosine decay to 0 at total_steps (as
  optax.warmup_cosine_decay_schedule); the step and the three numbers may be traced arrays."""
  step = jnp.asarray(step, jnp.float32)
  warmup, total = jnp.asarray(warmup_steps, jnp.float32), jnp.asarray(total_steps, jnp.float32)
  rising = peak * step / jnp.maximum(warmup, 1.0)
  progress = jnp.clip((step - warmup) / jnp.maximum(total - warmup, 1.0), 0.0, 1.0)
  return jnp.where(step < warmup, rising, 0.5 * peak * (1.0 + jnp.cos(math.pi * progress)))


class Schedule(NamedTuple):
  """The warmup-cosine schedule's numbers; schedule(step) is the learning rate at step."""
  peak: float
  warmup_steps: int
  total_steps: int

  def __call__(self, step):
    return warmup_cosine(step, self.peak, self.warmup_steps, self.total_steps)


def make_schedule(peak: float, total_steps: int, warmup_epochs: float, steps_per_epoch: int) -> Schedule:
  """Linear warmup from 0 to the peak, then cosine decay to 0 at the last of total_steps (>= 1).
  A warmup longer than MAX_WARMUP_SHARE of the run is shortened to it, with a notice."""
  warmup = epochs_to_steps(warmup_epochs, steps_per_epoch)
  cap = int(round(MAX_WARMUP_SHARE * total_steps))
  if warmup > cap:
    log(f'notice: warmup_epochs={warmup_epochs:g} shortened to {cap / steps_per_epoch:g} ({cap} steps), a '
        f'quarter of the run\'s {total_steps} steps')
  return Schedule(peak, max(0, min(warmup, cap, total_steps - 1)), total_steps)


def scheduled(build: Callable, schedule: Schedule) -> optax.GradientTransformation:
  """build(learning_rate, peak) -> an optimiser, learning_rate a function of the step (the
  schedule) and peak its peak, with the schedule's numbers held as data in the optimiser's state
  (optax.inject_hyperparams) rather than compiled into the step: runs that differ only in their
  length, warmup or learning rate share one compiled program."""
  def factory(peak, warmup_steps, total_steps):
    return build(Schedule(peak, warmup_steps, total_steps), peak)
  return optax.inject_hyperparams(factory)(**schedule._asdict())


def with_schedule_of(opt_state, fresh):
  """A restored optimiser state with the schedule's numbers of `fresh` (the state of the config
  now): a resumed run follows its config, whose epochs may have grown, not its checkpoint."""
  if isinstance(opt_state, (optax.InjectHyperparamsState, optax.InjectStatefulHyperparamsState)):
    return opt_state._replace(hyperparams=fresh.hyperparams)
  return opt_state


def cosine_between(start: float, end: float, total_steps: int) -> Callable:
  """step -> a value that moves from start at step 0 to end at total_steps on a half cosine
  (DINO's cosine_scheduler without warm-up: its weight decay from 0.04 to 0.4), then stays."""
  def value(step):
    progress = jnp.minimum(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 1.0)
    return end + (start - end) * (1 + jnp.cos(math.pi * progress)) / 2
  return value


# Parameters that are not weights of a layer, kept out of weight decay whatever their shape (a
# ViT's, as MAE and timm keep them out): position embeddings, the class and mask tokens.
NO_DECAY_NAMES = ('pos_embed', 'cls_token', 'mask_token', 'decoder_pos_embed')


def decay_mask(params):
  """True for kernels (ndim > 1); False for biases, BatchNorm and LayerNorm scales and offsets, and
  NO_DECAY_NAMES."""
  return jax.tree_util.tree_map_with_path(
      lambda path, p: p.ndim > 1 and getattr(path[-1], 'key', None) not in NO_DECAY_NAMES, params)


def _names(path) -> list:
  return [getattr(k, 'key', getattr(k, 'name', str(k))) for k in path]


def _layer_of(names: list, depth: int) -> int:
  """A parameter's layer for layer_decay: under 'encoder' (a ViT's), 0 for the embeddings
  (patch_embed, pos_embed, cls_token) and i + 1 for blocks_i; depth + 1 for everything else
  (the encoder's final norm, heads, a decoder, a probe), as MAE's get_layer_id_for_vit."""
  if names[:1] == ['encoder'] and len(names) > 1:
    if names[1] in ('patch_embed', 'pos_embed', 'cls_token'):
      return 0
    if names[1].startswith('blocks_'):
      return int(names[1].split('_')[1]) + 1
  return depth + 1


def layer_decay(decay: float) -> optax.GradientTransformation:
  """Layer-wise learning-rate decay (BEiT's, MAE's fine-tuning): each update of a ViT encoder's
  layer l of L + 1 (_layer_of) scaled by decay ** (L + 1 - l), so the head trains at the full rate
  and the patch embedding at decay ** (L + 1). Inside optim.partition it sees only its group's
  parameters (the others are optax's MaskedNode, left as they are)."""
  def update(updates, state, params=None):
    paths = [_names(p) for p, _ in jax.tree_util.tree_leaves_with_path(updates)]
    blocks = [int(n[1].split('_')[1]) for n in paths if n[:1] == ['encoder'] and len(n) > 1
              and n[1].startswith('blocks_')]
    depth = max(blocks) + 1 if blocks else 0
    scaled = jax.tree_util.tree_map_with_path(
        lambda path, u: u * decay ** (depth + 1 - _layer_of(_names(path), depth)), updates)
    return scaled, state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class Lars(NamedTuple):
  """How LARS adapts each kernel's step (the README's "Optimisers"): eta the trust coefficient;
  trust_ratio 'update_norm' (eta * |p| / |g + wd p|, google-research/simclr and optax.lars) or
  'sum_of_norms' (eta * |p| / (|g| + wd |p| + 1e-8), solo-learn's); clip (LARC: the ratio divided
  by the learning rate and capped at 1, so a step is never larger than plain SGD's, as solo-learn's
  clip_lr); lr_in_momentum (True: v = m v + lr r u, p -= v, google-research/simclr's classic
  momentum; False: v = m v + r u, p -= lr v, PyTorch's SGD as solo-learn runs it)."""
  eta: float = 0.001
  trust_ratio: str = 'update_norm'
  clip: bool = False
  lr_in_momentum: bool = True


TRUST_RATIOS = ('update_norm', 'sum_of_norms')
_SOLO_EPS = 1e-8  # solo-learn's LARS divides by |g| + wd |p| + 1e-8


def scale_by_lars(learning_rate, weight_decay, lars: Lars, mask=decay_mask) -> optax.GradientTransformation:
  """The LARS direction of each masked tensor (kernels): its gradient plus the weight decay, times
  the trust ratio (clipped against learning_rate(step) when lars.clip); the learning rate itself
  is applied after (make_optimizer). Where |p| or the norm the ratio divides by is 0 the ratio is
  1; solo-learn's form then leaves out the weight decay as well. Other tensors pass unchanged."""
  def ratio_and_update(g, p, lr, weight_decay):
    p_norm, g_norm = jnp.linalg.norm(p), jnp.linalg.norm(g)
    u = g + weight_decay * p
    if lars.trust_ratio == 'update_norm':
      u_norm = jnp.linalg.norm(u)
      ok = (p_norm > 0) & (u_norm > 0)
      ratio, fallback = lars.eta * p_norm / jnp.where(ok, u_norm, 1.0), u
    else:
      ok = (p_norm > 0) & (g_norm > 0)
      ratio, fallback = lars.eta * p_norm / (g_norm + weight_decay * p_norm + _SOLO_EPS), g
    if lars.clip:  # at a learning rate of 0 (the first warmup step) the cap holds
      ratio = jnp.minimum(jnp.where(lr > 0, ratio / jnp.maximum(lr, 1e-30), 1.0), 1.0)
    return jnp.where(ok, ratio * u, fallback)

  def init(params):
    return optax.ScaleByScheduleState(count=jnp.zeros([], jnp.int32))

  def update(updates, state, params):
    lr = learning_rate(state.count) if callable(learning_rate) else learning_rate
    wd = weight_decay(state.count) if callable(weight_decay) else weight_decay
    adapt = mask(params)
    out = jax.tree.map(lambda g, p, a: ratio_and_update(g, p, lr, wd) if a else g, updates, params, adapt)
    return out, optax.ScaleByScheduleState(count=optax.safe_increment(state.count))
  return optax.GradientTransformation(init, update)


def make_optimizer(name: str, schedule, momentum: float, weight_decay,
                   lars: Lars = Lars(), beta2: float = 0.999) -> optax.GradientTransformation:
  """SGD with momentum, LARS (the form `lars` gives) or AdamW (betas momentum, beta2); no decay or
  LARS adaptation where decay_mask says. weight_decay: a number, or a function of the step
  (cosine_between)."""
  if name == 'sgd':
    return optax.chain(optax.add_decayed_weights(weight_decay, decay_mask),
                       optax.sgd(schedule, momentum=momentum, nesterov=False))
  if name == 'lars':
    direction = scale_by_lars(schedule, weight_decay, lars)
    if lars.lr_in_momentum:
      return optax.chain(direction, optax.scale_by_learning_rate(schedule), optax.trace(momentum))
    return optax.chain(direction, optax.trace(momentum), optax.scale_by_learning_rate(schedule))
  if name == 'adamw':
    return optax.adamw(schedule, b1=momentum, b2=beta2, weight_decay=weight_decay, mask=decay_mask)
  raise ValueError(f'unknown optimizer {name!r}')


def partition(transforms: dict, groups: dict, default: str | None = None) -> optax.GradientTransformation:
  """One optimiser per parameter group: groups maps a module's path in the params ('encoder',
  'head', 'online_probe', 'projector/prototypes') to a key of transforms; a parameter takes the
  group of the longest path that holds it, and `default` when none does. Use
  optax.set_to_zero() for a frozen group."""
  def label(path):
    for i in range(len(path), 0, -1):
      if '/'.join(path[:i]) in groups:
        return groups['/'.join(path[:i])]
    return default

  def labels(params):
    flat = traverse_util.flatten_dict(params)
    return traverse_util.unflatten_dict({path: label(path) for path in flat})
  return optax.multi_transform(transforms, labels)


class FrozenState(NamedTuple):
  count: jax.Array
  inner: optax.OptState


def _schedule_counters() -> tuple:
  """The state types of the step counters of schedules inside an optimiser (the learning rate's,
  the weight decay's; optax names the second nowhere public). Made when an optimiser is built, not
  at import: the state holds an array, and making one starts JAX's backends, whose messages would
  reach the terminal before the command line quiets the logs."""
  return optax.ScaleByScheduleState, type(optax.add_decayed_weights(lambda step: 0.0).init({}))


def frozen_for(steps: int, inner: optax.GradientTransformation) -> optax.GradientTransformation:
  """inner, but for the first `steps` updates no update at all: zeros, and inner's state (its
  momentum, Adam's moments and step count) held as it was, as PyTorch's optimisers skip a
  parameter without a gradient (DINO's last layer in its first epoch, SwAV's prototypes); the
  step counters of its schedules (learning rate, weight decay) go on with the run, as a global
  scheduler's do, so the group unfreezes at the run's learning rate, not at its warm-up's start."""
  counters = _schedule_counters()
  counter = lambda x: isinstance(x, counters)

  def init(params):
    return FrozenState(jnp.zeros([], jnp.int32), inner.init(params))

  def update(updates, state, params=None):
    new_updates, new_inner = inner.update(updates, state.inner, params)
    frozen = state.count < steps
    new_updates = jax.tree.map(lambda u: jnp.where(frozen, jnp.zeros_like(u), u), new_updates)
    hold = lambda new, old: jnp.where(frozen, old, new)
    new_inner = jax.tree.map(lambda new, old: new if counter(new) else jax.tree.map(hold, new, old),
                             new_inner, state.inner, is_leaf=counter)
    return new_updates, FrozenState(optax.safe_increment(state.count), new_inner)
  return optax.GradientTransformation(init, update)
