"""Run by tests/methods/test_methods.py in a subprocess with 4 CPU devices, for one method:

    python tests/method_check.py TESTS_DIR WORKDIR METHOD

On the smallest encoder of the method's family (a ResNet of a stem and one residual block, or a
ViT of one block: the mechanics checked here do not depend on depth, and the compiles are half as
long), with every step's views made of the first half of its batch twice over (row 2i + j is
image i's, j = 0, 1: see `repeated_half`):
1. Two steps of the method's compiled step on 1 device with the whole batch at once, and on the
   4 devices with the batch in 2 chunks (config.batch_chunks=2, the gradient cache: chunk j holds
   rows j, j + 2, ..., so each chunk holds the half batch and BatchNorm's statistics per chunk are
   the whole batch's): the losses, and after each step the largest difference of the parameters,
   BatchNorm statistics and method state (the EMA target, a queue, a centre) relative to how far
   the 1-device run moved them from their initial values. Negatives, cross-correlations and
   statistics come from the global batch, and the loss sees every chunk's outputs at once, so the
   runs differ only by float32 reduction order; statistics or negatives per device, a gradient not
   averaged over the devices, a chunk put back in the wrong rows or a loss of per-chunk pieces
   change them by orders of magnitude more.
2. For SimCLR and each method with a hook's implementation of its own (`resumes_its_own`: a
   state, its views or inputs, a parameter group): a run of one epoch (4 steps) stopped mid-epoch (SIGTERM just
   before step 2) and resumed through the training loop, on the 4 devices in 2 chunks, against
   the 4-device steps of 1. carried on to the run's end: whether every array of its final
   checkpoint is bit-identical to the straight trajectory's state.
Prints one JSON line.
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, sys.argv[1])
from conftest import build, final_params, make_inputs, small_config, train_in_process  # noqa: E402
from simclr_jax import methods, models  # noqa: E402
from simclr_jax.methods.base import Method  # noqa: E402
from simclr_jax.config_base import apply_overrides  # noqa: E402
from simclr_jax.core import parallel  # noqa: E402
from simclr_jax.core.errors import Preempted  # noqa: E402
from simclr_jax.models import resnet, vit  # noqa: E402
from simclr_jax.stages import pretrain  # noqa: E402

# The smallest encoder of each family, by a name of its own (this process only).
resnet.ARCHITECTURES['resnet_check'] = ('basic', (1,))
vit.VIT_ARCHITECTURES['vit_check'] = (192, 1, 3)
CHUNKS = 2


def repeated_half(method_class):
  """The method's inputs made of the first half of each batch twice over, rows 2i and 2i + 1 both
  image i's views (and mask keys): chunk j of CHUNKS (rows j, j + 2, ...) is that half in order,
  so BatchNorm over a chunk equals BatchNorm over the whole batch."""
  make_inputs_of = method_class.inputs

  def inputs(self, first, second):
    make = make_inputs_of(self, first, second)

    def repeated(key, images):
      return jax.tree.map(lambda x: jnp.repeat(x[:, :x.shape[1] // CHUNKS], CHUNKS, axis=1), make(key, images))
    return repeated
  method_class.inputs = inputs


def steps(config, devices, n):
  """The first n steps on a mesh of `devices`, the inputs made as the stages make them (on the 4
  devices the very program the runs below compile): the losses, (params, batch_stats,
  method_state) after each step, and initially."""
  mesh = parallel.make_mesh(devices)
  inputs, eval_inputs = make_inputs(config, mesh)
  task, _ = build(pretrain.build_task, config, mesh, inputs, eval_inputs)
  step, state = inputs.bind(task.step_fn), task.state
  trees = lambda state: jax.tree.map(np.array, (state.params, state.batch_stats, state.method_state))
  initial = trees(state)
  losses, after = [], []
  for _, args in inputs.batches(0, n):
    state, metrics = step(state, *args)
    losses.append(float(metrics['loss']))
    after.append(trees(state))
  return losses, after, initial


def max_diff(a, b):
  return max((float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)


def _split(tree):
  """(floating-point leaves, the others: a queue's pointer)."""
  leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
  return [x for x in leaves if np.issubdtype(x.dtype, np.floating)], [x for x in leaves if not np.issubdtype(x.dtype, np.floating)]


def relative_to_change(one, four, initial, parts=False):
  """max |four - one| / max |one - initial| over the floating-point leaves: the runs' difference
  relative to the change the 1-device run made (0 when nothing changed); infinite when an integer
  leaf (a queue's pointer) differs. With parts (a method's state), the largest of its parts' (its
  EMA target, its queue, its centre), so that a queue whose rows all changed hides no target."""
  if parts and one:
    return max(relative_to_change(one[k], four[k], initial[k]) for k in one)
  (f1, i1), (f4, i4), (f0, _) = _split(one), _split(four), _split(initial)
  if any(not np.array_equal(a, b) for a, b in zip(i1, i4)):
    return float('inf')
  diff = max((float(np.abs(a - b).max()) for a, b in zip(f1, f4)), default=0.0)
  change = max((float(np.abs(a - b).max()) for a, b in zip(f1, f0)), default=0.0)
  return diff / change if change > 0 else diff


# What a method may add to a checkpoint or to a step's randomness (methods.base.Method's hooks).
HOOKS = ('views', 'inputs', 'forward', 'init_state', 'update', 'param_groups')


def hook_implementations(method_class) -> set:
  """(hook, the class that implements it) for each hook of HOOKS the method takes from elsewhere
  than methods.base.Method."""
  owners = {h: next(c for c in method_class.__mro__ if h in c.__dict__) for h in HOOKS}
  return {(h, c.__qualname__) for h, c in owners.items() if c is not Method}


def resumes_its_own(name: str) -> bool:
  """Whether a method's stop and resume is its own to check (name: as the test names it,
  'dino@vit' on a ViT): SimCLR's (the loss only, the online probe's optimiser too), and each
  other method's that brings an implementation of a hook (a state, its views or inputs, a
  parameter group with its own schedule) that no method before it in methods.NAMES has. The rest
  resume through a path already checked: Barlow Twins, VICReg and DCL change only the loss
  (SimCLR's path), BYOL takes MoCo v3's EMA target from MomentumMethod, and DINO on a ViT is
  DINO's state and views (MAE resumes a ViT)."""
  if '@' in name:
    return False
  seen = set()
  for other in methods.NAMES:
    own = hook_implementations(methods.get(other))
    if other == name:
      return name == 'simclr' or bool(own - seen)
    seen |= own
  raise KeyError(name)


def main():
  workdir, name = sys.argv[2], sys.argv[3]
  config = small_config(name, epochs=1)
  config = apply_overrides(config, {'model': 'vit_check' if models.is_vit(config.model) else 'resnet_check'})
  resume = resumes_its_own(name)
  repeated_half(methods.get(config.method))
  chunked = apply_overrides(config.copy_and_resolve_references(), {'batch_chunks': CHUNKS})
  total = 4  # one epoch of 4 steps
  l1, one, initial = steps(config, jax.devices()[:1], 2)
  l4, four, _ = steps(chunked, jax.devices(), total)  # the straight run: the 4-device trajectory, chunked
  out = {'devices': len(jax.devices()), 'loss_1': l1, 'loss_4': l4[:2],
         # after each step, for (params, stats, method state): the difference relative to the change
         'four': [[relative_to_change(a, b, c, parts=i == 2) for i, (a, b, c) in enumerate(zip(x, y, initial))]
                  for x, y in zip(one, four)],
         'moved': max_diff(one[-1][0], initial[0]), 'method_state_leaves': len(jax.tree.leaves(one[-1][2])),
         'probe': 'online_probe' in one[-1][0], 'resumed': resume, 'method': config.method}
  if not resume:
    print(json.dumps(out), flush=True)
    return
  try:
    train_in_process(chunked, os.path.join(workdir, 'stopped'), stop_at_step=2)
    out['stopped'] = False
  except Preempted:
    out['stopped'] = True
  out['stopped_at'] = final_params(os.path.join(workdir, 'stopped'))[0]
  resumed = train_in_process(chunked, os.path.join(workdir, 'stopped'))
  s_b, b = final_params(os.path.join(workdir, 'stopped'))
  a = dict(zip(('params', 'batch_stats', 'method_state'), four[-1]))
  same_tree = jax.tree.structure(a) == jax.tree.structure(b)
  out.update(steps=[len(four), s_b], saved=sorted(b), identical=same_tree and all(
                 np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))),
             leaves=len(jax.tree.leaves(b)),
             # the last logging window's mean (log_every_steps=2, summed in float32 as the loop
             # sums) against the resumed run's
             final_loss=[float(np.float32(l4[-2]) + np.float32(l4[-1])) / 2, resumed['final_loss']],
             method=resumed['method'], embedding=[resumed['embedding_std'], resumed['embedding_rank']])
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
