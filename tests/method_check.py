"""Run by test_methods.py in a subprocess with 4 CPU devices, for one method:

    python tests/method_check.py TESTS_DIR WORKDIR METHOD

1. Two steps of the method's compiled step on 1 device and on the 4 devices, on the same global
   batch: the losses, and the largest relative differences of the parameters, BatchNorm statistics
   and method state (the EMA target) after each step -- negatives, cross-correlations and
   statistics come from the global batch -- and, for scale, the same differences between the
   1-device run and one whose initial parameters are perturbed by 1e-7 (float32 rounding).
2. A run stopped mid-epoch (SIGTERM just before step 3) and resumed, against a straight run, on
   the 4 devices: whether every array of the final checkpoints is bit-identical.
Prints one JSON line.
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from conftest import final_params, make_inputs, train_in_process  # noqa: E402
from test_methods import small_config  # noqa: E402
from simclr_jax import parallel, pretrain  # noqa: E402
from simclr_jax.errors import Preempted  # noqa: E402


def steps(config, devices, n, perturb=0.0):
  """The first n steps on a mesh of `devices`, the inputs made as the stages make them (on the 4
  devices the very program the runs below compile): the losses, and (params, batch_stats,
  method_state) after each step. perturb > 0 multiplies each initial parameter by (1 + perturb *
  a fixed normal draw): the effect of float32 rounding on the dynamics, for the tolerance."""
  mesh = parallel.make_mesh(devices)
  inputs, eval_inputs = make_inputs(config, mesh)
  task = pretrain.build_task(config, mesh, inputs, eval_inputs)
  step, state = inputs.bind(task.step_fn), task.state
  if perturb:
    leaves, tree = jax.tree.flatten(state.params)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    leaves = [x * (1 + perturb * jax.random.normal(k, x.shape)) for x, k in zip(leaves, keys)]
    state = state.replace(params=jax.tree.unflatten(tree, leaves))
  initial = jax.tree.map(np.array, state.params)
  losses, after = [], []
  for _, args in inputs.batches(0, n):
    state, metrics = step(state, *args)
    losses.append(float(metrics['loss']))
    after.append(jax.tree.map(np.array, (state.params, state.batch_stats, state.method_state)))
  return losses, after, initial


def max_diff(a, b):
  return max((float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)


def max_rel_diff(a, b):
  """The largest difference of two trees relative to the largest value of the first."""
  scale = max((float(np.abs(x).max()) for x in jax.tree.leaves(a)), default=0.0)
  return max_diff(a, b) / max(scale, 1e-12)


def main():
  workdir, name = sys.argv[2], sys.argv[3]
  config = small_config(name, epochs=2)
  l1, one, initial = steps(config, jax.devices()[:1], 2)
  l4, four, _ = steps(config, jax.devices(), 2)
  lp, perturbed, _ = steps(config, jax.devices()[:1], 2, perturb=1e-7)
  out = {'devices': len(jax.devices()), 'loss_1': l1, 'loss_4': l4, 'loss_perturbed': lp,
         # after each step, each leaf relative to its largest value: (params, stats, method state)
         'four': [[max_rel_diff(a, b) for a, b in zip(x, y)] for x, y in zip(one, four)],
         'perturbed': [[max_rel_diff(a, b) for a, b in zip(x, y)] for x, y in zip(one, perturbed)],
         'moved': max_diff(one[-1][0], initial), 'method_state_leaves': len(jax.tree.leaves(one[-1][2]))}
  straight = train_in_process(config, os.path.join(workdir, 'straight'))
  try:
    train_in_process(config, os.path.join(workdir, 'stopped'), stop_at_step=3)
    out['stopped'] = False
  except Preempted:
    out['stopped'] = True
  out['stopped_at'] = final_params(os.path.join(workdir, 'stopped'))[0]
  resumed = train_in_process(config, os.path.join(workdir, 'stopped'))
  (s_a, a), (s_b, b) = final_params(os.path.join(workdir, 'straight')), final_params(os.path.join(workdir, 'stopped'))
  out.update(steps=[s_a, s_b], saved=sorted(a), identical=all(np.array_equal(x, y) for x, y in
                                                              zip(jax.tree.leaves(a), jax.tree.leaves(b))),
             leaves=len(jax.tree.leaves(a)), final_loss=[straight['final_loss'], resumed['final_loss']],
             method=straight['method'], embedding=[straight['embedding_std'], straight['embedding_rank']])
  print(json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
