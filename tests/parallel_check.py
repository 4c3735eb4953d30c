"""Run by test_parallel.py in a subprocess with 4 CPU devices: two steps of each pretraining method
and one classifier step on 1 device and on 4 devices; prints the largest differences as JSON.

    python tests/parallel_check.py TESTS_DIR [CONFIG ...]   # configs/<CONFIG>.py; default: all of them

The global batch is the same on both meshes, so negatives, cross-correlations, BatchNorm statistics
and the EMA target computed over it agree within float32 reduction order.
"""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
import conftest  # noqa: E402
from conftest import tiny_config  # noqa: E402
from simclr_jax.stages import classify  # noqa: E402
from simclr_jax.data import sources  # noqa: E402
from simclr_jax.data import pipeline  # noqa: E402
from simclr_jax.core import parallel  # noqa: E402
from simclr_jax.stages import pretrain  # noqa: E402


def steps(build_fn, config, devices, source, n):
  mesh = parallel.make_mesh(devices)
  inputs = pipeline.DeviceInputs(source, None, mesh, config.batch_size, config.seed)
  task, _ = conftest.build(build_fn, config, mesh, inputs)
  initial = jax.tree.map(np.array, task.state.params)
  step, state = inputs.bind(task.step_fn), task.state
  losses = []
  for _, args in inputs.batches(0, n):
    state, metrics = step(state, *args)
    losses.append(float(metrics['loss']))
  return losses, jax.tree.map(np.asarray, state.params), jax.tree.map(np.asarray, state.batch_stats), \
      jax.tree.map(np.asarray, state.method_state), initial


def max_diff(a, b):
  leaves = [(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
  return max((float(np.abs(x - y).max()) for x, y in leaves), default=0.0)


rng = np.random.RandomState(0)
images = rng.randint(0, 256, (128, 32, 32, 3)).astype(np.uint8)
labels = rng.randint(0, 10, 128).astype(np.int32)
source = sources.in_memory('random', sources.Split(images, labels), sources.Split(images[:64], labels[:64]), 10)
names = sys.argv[2:] or ['pretrain', 'supervised']
out = {'devices': len(jax.devices())}
for name in names:
  config = tiny_config(name, batch_size=64, epochs=1, model='resnet10')
  build = pretrain.build_task if config.stage == 'pretrain' else classify.build_task
  n = 2 if config.stage == 'pretrain' else 1  # two: the EMA target after one step feeds the second
  l1, p1, s1, m1, init = steps(build, config, jax.devices()[:1], source, n)
  l4, p4, s4, m4, _ = steps(build, config, jax.devices(), source, n)
  out[name] = {'loss_1': l1, 'loss_4': l4, 'params': max_diff(p1, p4), 'stats': max_diff(s1, s4),
               'method_state': max_diff(m1, m4), 'moved': max_diff(p1, init)}
print(json.dumps(out))
