"""Run by test_stream.py: the streamed input path in one process of a (possibly multi-process) run.

    python tests/stream_check.py TESTS_DIR WORKDIR reference     # one process of 4 devices
    python tests/stream_check.py TESTS_DIR WORKDIR replay --coordinator=HOST:PORT --num_processes=N --process_id=I

Both print one JSON line: this process's rows of each global batch and the record indices it read
in epoch 0. `reference` trains one epoch on the streamed batches and saves the train state after
every step (WORKDIR/reference.npz), then replays each step on half of its devices. `replay` runs
each step k once from the reference's state k - 1 on its own streamed batch k and reports how far
its loss and state are from the reference's step k. Each replayed step starts from the same state
as the reference's, so the differences are those of one step's float32 reductions done in another
order, not their growth over several steps; the reference's own replay on half the devices
measures that order's effect within one process.
"""
import json
import os
import sys

import jax
import numpy as np


def _leaves(state):
  return [np.array(x.addressable_data(0)) for x in jax.tree.leaves(state)]  # copies: the step donates


def _setup(config, mesh):
  from conftest import build, make_inputs
  from simclr_jax.stages import pretrain
  inputs, _ = make_inputs(config, mesh)
  task, _ = build(pretrain.build_task, config, mesh, inputs)
  return inputs, inputs.bind(task.step_fn), task.state


def _replay(config, mesh, path):
  """Per step k: |loss - reference loss| and the largest difference of any state leaf from the
  reference's, relative to that leaf's largest value."""
  from simclr_jax.core import parallel
  inputs, step, state = _setup(config, mesh)
  ref = np.load(path)
  treedef = jax.tree.structure(state)
  load = lambda k: jax.tree.unflatten(treedef, [ref[f'{k}/{i}'] for i in range(treedef.num_leaves)])
  loss_diff, state_diff = [], []
  for k, batch in inputs.batches(0, inputs.steps_per_epoch):
    k += 1
    after, metrics = step(parallel.put_replicated(load(k - 1), mesh), *batch)
    loss_diff.append(abs(float(metrics['loss']) - float(ref['losses'][k - 1])))
    worst = 0.0
    for got, want in zip(_leaves(after), jax.tree.leaves(load(k))):
      if np.issubdtype(want.dtype, np.floating):
        scale = max(float(np.abs(want).max()), 1e-30)
        worst = max(worst, float(np.abs(got.astype(np.float64) - want).max()) / scale)
      else:  # step counters and keys: exactly equal
        worst = max(worst, float(np.any(got != want)))
    state_diff.append(worst)
  inputs.close()
  return loss_diff, state_diff


def main():
  args = dict(a.lstrip('-').split('=', 1) for a in sys.argv[4:])
  if 'coordinator' in args:
    jax.distributed.initialize(args['coordinator'], int(args['num_processes']), int(args['process_id']))
  sys.path.insert(0, sys.argv[1])
  workdir, mode = sys.argv[2], sys.argv[3]
  from conftest import MECHANICS, tiny_config
  from simclr_jax.core import parallel

  config = tiny_config(train_limit=256, batch_size=64, epochs=1, data_placement='stream', input_workers=1, **MECHANICS)
  mesh = parallel.make_mesh()
  path = os.path.join(workdir, 'reference.npz')
  inputs, step, state = _setup(config, mesh)
  plan = inputs.train_plan(0, inputs.steps_per_epoch)
  out = {'process': jax.process_index(), 'devices': jax.device_count(), 'rows': [plan.lo, plan.hi],
         'read': [int(i) for j in range(inputs.steps_per_epoch) for i in plan.record_indices(j)]}
  if mode == 'reference':
    saved, losses = {'0': _leaves(state)}, []
    for k, batch in inputs.batches(0, inputs.steps_per_epoch):
      state, metrics = step(state, *batch)
      losses.append(float(metrics['loss']))
      saved[str(k + 1)] = _leaves(state)
    inputs.close()
    np.savez(path, losses=np.asarray(losses),
             **{f'{k}/{i}': leaf for k, leaves in saved.items() for i, leaf in enumerate(leaves)})
    out['losses'] = losses
    half = parallel.make_mesh(jax.devices()[:len(jax.devices()) // 2])
    out['half_loss_diff'], out['half_state_diff'] = _replay(config, half, path)
  else:
    inputs.close()
    out['loss_diff'], out['state_diff'] = _replay(config, mesh, path)
  print(json.dumps(out), flush=True)


if __name__ == '__main__':  # the input workers are spawned: they import this file as a module
  main()
