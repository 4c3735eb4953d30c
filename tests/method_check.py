"""Run by tests/methods/test_methods.py in a subprocess with 4 CPU devices, for one method:

    python tests/method_check.py TESTS_DIR WORKDIR METHOD

1. Two steps of the method's compiled step on 1 device and on the 4 devices, on the same global
   batch: the losses, and after each step the largest difference of the parameters, BatchNorm
   statistics and method state (the EMA target) relative to how far the 1-device run moved them
   from their initial values -- negatives, cross-correlations and statistics come from the global
   batch, so the runs differ only by float32 reduction order.
2. A run of one epoch (4 steps) stopped mid-epoch (SIGTERM just before step 2) and resumed
   through the training loop, on the 4 devices, against the 4-device steps of 1. carried on to
   the run's end: whether every array of its final checkpoint is bit-identical to the straight
   trajectory's state.
3. The gradient cache (tests/chunk_check.py): the objective with the batch in 2 chunks, on 1
   device and on the 4, against the whole batch at once on 1 device.
Prints one JSON line.
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
import chunk_check  # noqa: E402
from conftest import build, final_params, make_inputs, small_config, train_in_process  # noqa: E402
from simclr_jax.core import parallel  # noqa: E402
from simclr_jax.stages import pretrain  # noqa: E402
from simclr_jax.core.errors import Preempted  # noqa: E402


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


def main():
  workdir, name = sys.argv[2], sys.argv[3]
  config = small_config(name, epochs=1)
  total = 4  # one epoch of 4 steps
  l1, one, initial = steps(config, jax.devices()[:1], 2)
  l4, four, _ = steps(config, jax.devices(), total)  # the straight run: the 4-device trajectory
  out = {'devices': len(jax.devices()), 'loss_1': l1, 'loss_4': l4[:2],
         # after each step, for (params, stats, method state): the difference relative to the change
         'four': [[relative_to_change(a, b, c, parts=i == 2) for i, (a, b, c) in enumerate(zip(x, y, initial))]
                  for x, y in zip(one, four)],
         'moved': max_diff(one[-1][0], initial[0]), 'method_state_leaves': len(jax.tree.leaves(one[-1][2])),
         'probe': 'online_probe' in one[-1][0]}
  try:
    train_in_process(config, os.path.join(workdir, 'stopped'), stop_at_step=2)
    out['stopped'] = False
  except Preempted:
    out['stopped'] = True
  out['stopped_at'] = final_params(os.path.join(workdir, 'stopped'))[0]
  resumed = train_in_process(config, os.path.join(workdir, 'stopped'))
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
  out['chunks'] = chunk_check.differences(config, [parallel.make_mesh(d) for d in (jax.devices()[:1], jax.devices())])
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
