"""Run by test_stream.py: the streamed input path in one process of a (possibly multi-process) run.

    python tests/stream_check.py TESTS_DIR WORKDIR [--coordinator=HOST:PORT --num_processes=N --process_id=I]

Prints one JSON line: this process's rows of each global batch, the record indices it read in
epoch 0 and the losses of a few training steps on the streamed batches.
"""
import json
import sys

import jax


def main():
  args = dict(a.lstrip('-').split('=', 1) for a in sys.argv[3:])
  if 'coordinator' in args:
    jax.distributed.initialize(args['coordinator'], int(args['num_processes']), int(args['process_id']))
  sys.path.insert(0, sys.argv[1])
  from conftest import tiny_config
  from simclr_jax import input_pipeline, parallel, pretrain

  config = tiny_config(train_limit=256, batch_size=64, epochs=1, data_placement='stream', input_workers=1)
  mesh = parallel.make_mesh()
  inputs, _ = input_pipeline.make_inputs(config, mesh)
  plan = inputs.train_plan(0)
  read = [int(i) for j in range(inputs.steps_per_epoch) for i in plan.record_indices(j)]
  task = pretrain.build_task(config, mesh, inputs)
  step, state, losses = inputs.bind(task.step_fn), task.state, []
  for x, y in inputs.epoch(0):
    state, metrics = step(state, x, y)
    losses.append(float(metrics['loss']))
  inputs.close()
  print(json.dumps({'process': jax.process_index(), 'devices': jax.device_count(),
                    'rows': [plan.lo, plan.hi], 'read': read, 'losses': losses}), flush=True)


if __name__ == '__main__':  # the input workers are spawned: they import this file as a module
  main()
