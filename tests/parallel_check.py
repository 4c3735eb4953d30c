"""Run by test_parallel.py in a subprocess with 4 CPU devices: one pretraining and one classifier step
on 1 device and on 4 devices; prints the largest differences as JSON."""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from conftest import tiny_config  # noqa: E402
from simclr_jax import classify, data, input_pipeline, parallel, pretrain  # noqa: E402


def one_step(build, config, devices, dataset):
  mesh = parallel.make_mesh(devices)
  inputs = input_pipeline.device_inputs(dataset, mesh, config.batch_size, config.seed)
  task = build(config, mesh, inputs)
  state, metrics = inputs.bind(task.step_fn)(task.state, *next(inputs.epoch(0)))
  initial = build(config, mesh, inputs).state.params
  return (float(metrics['loss']), jax.tree.map(np.asarray, state.params),
          jax.tree.map(np.asarray, state.batch_stats), jax.tree.map(np.asarray, initial))


def max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


rng = np.random.RandomState(0)
images = rng.randint(0, 256, (128, 32, 32, 3)).astype(np.uint8)
labels = rng.randint(0, 10, 128).astype(np.int32)
dataset = data.Dataset('random', 10, data.Split(images, labels), data.Split(images[:64], labels[:64]))
out = {'devices': len(jax.devices())}
for name, build, stage in (('pretrain', pretrain.build_task, 'pretrain'),
                           ('supervised', classify.build_task, 'supervised')):
  config = tiny_config(stage, batch_size=64, epochs=1)
  l1, p1, s1, init = one_step(build, config, jax.devices()[:1], dataset)
  l4, p4, s4, _ = one_step(build, config, jax.devices(), dataset)
  out[name] = {'loss_1': l1, 'loss_4': l4, 'params': max_diff(p1, p4), 'stats': max_diff(s1, s4),
               'moved': max_diff(p1, init)}
print(json.dumps(out))
