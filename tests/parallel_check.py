"""Run by test_parallel.py in a subprocess with 4 CPU devices: one pretraining and one classifier step
on 1 device and on 4 devices; prints the largest differences as JSON."""
import json
import sys

import jax
import numpy as np

sys.path.insert(0, sys.argv[1])
from conftest import tiny_config  # noqa: E402
from simclr_jax import classify, parallel, pretrain, train_loop  # noqa: E402


def one_step(build, config, devices, images, labels):
  mesh = parallel.make_mesh(devices)
  put = lambda x: parallel.put_replicated(x, mesh)
  data = train_loop.DeviceData(10, put(images), put(labels), put(images[:64]), put(labels[:64]))
  task = build(config, mesh, data)
  perm = train_loop.epoch_permutation(task.state['key'], 0, images.shape[0], 64)
  state, metrics = task.step_fn(task.state, task.images, task.labels, perm)
  return float(metrics['loss']), jax.tree.map(np.asarray, state['params']), jax.tree.map(
      np.asarray, state['batch_stats'])


def max_diff(a, b):
  return max(float(np.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


rng = np.random.RandomState(0)
images = rng.randint(0, 256, (128, 32, 32, 3)).astype(np.uint8)
labels = rng.randint(0, 10, 128).astype(np.int32)
out = {'devices': len(jax.devices())}
for name, build, stage in (('pretrain', pretrain.build_task, 'pretrain'),
                           ('supervised', classify.build_task, 'supervised')):
  config = tiny_config(stage, batch_size=64, epochs=1)
  l1, p1, s1 = one_step(build, config, jax.devices()[:1], images, labels)
  l4, p4, s4 = one_step(build, config, jax.devices(), images, labels)
  out[name] = {'loss_1': l1, 'loss_4': l4, 'params': max_diff(p1, p4), 'stats': max_diff(s1, s4),
               'moved': max_diff(p1, build(config, parallel.make_mesh(jax.devices()[:1]), train_loop.DeviceData(
                   10, *(jax.device_put(x) for x in (images, labels, images[:64], labels[:64])))).state['params'])}
print(json.dumps(out))
