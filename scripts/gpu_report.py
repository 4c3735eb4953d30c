"""Every GPU figure from one command: speed against the PyTorch reference, where the step's time
goes, and accuracy after as many pretraining epochs as the time allows; into one folder.

    python scripts/gpu_report.py OUT --data_dir=../shared/data/tfds \
        --reference=../shared/reference/simclr_torch.py          # one GPU, about 9 minutes
    python scripts/gpu_report.py OUT --tiny                      # the same path on the CPU, tiny sizes
    python scripts/gpu_report.py OUT --parts=environment,costs   # only some parts

Parts, each with its own time limit (a part that runs out leaves the others' results and says so):
  environment  device, library versions
  costs        XLA cost analysis (FLOPs, bytes) of the augmentation and of the model's forward and
               backward at batch 1024, and the number of kernels the step compiles to
  benchmark    scripts/benchmark.py, batch 512 and 1024, bfloat16, with --reference and --stream
  breakdown    milliseconds per step of augmentation, forward, backward, NT-Xent, optimiser update
               and idle gaps between steps, each part timed as its own compiled function
  vit          scripts/benchmark.py's SimCLR step on a ViT-S/4 at batch 512, bfloat16 (the
               benchmark part gives ResNet-18's at the same batch)
  memory       scripts/benchmark.py --memory: the SimCLR step's compiled memory and images/s at
               batch 1024 whole, in 4 chunks (config.batch_chunks) and rematerialised (config.remat)
               and at 4096 in 16 chunks, bfloat16
  accuracy     the default recipe pretrained on cifar10_jpeg for as many epochs as the remaining
               time allows (200 at most), then kNN and the features linear probe
Writes OUT/report.md, OUT/{environment,costs,benchmark,breakdown,vit,memory,accuracy}.json and OUT/log.txt.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')

# Seconds on the GPU; the accuracy part gets what is left of --budget (at 40,000 images/s, 200
# epochs of cifar10_jpeg take about 250 s plus start-up and evaluations).
PART_LIMITS = {'environment': 20, 'costs': 60, 'benchmark': 150, 'breakdown': 60, 'vit': 60, 'memory': 90}
PARTS = ('environment', 'costs', 'benchmark', 'breakdown', 'vit', 'memory', 'accuracy')


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('out')
  p.add_argument('--data_dir', default=os.path.join(ROOT, '..', 'shared', 'data', 'tfds'))
  p.add_argument('--dataset', default='cifar10_jpeg')
  p.add_argument('--reference', default='', help='simclr_torch.py, run by the benchmark part')
  p.add_argument('--budget', type=float, default=540, help='seconds for everything')
  p.add_argument('--max_epochs', type=int, default=200)
  p.add_argument('--tiny', action='store_true', help='CPU sizes: width 0.125, few images and steps')
  p.add_argument('--workdir', default='', help='pretraining workdir (default: OUT/../gpu_report_run)')
  p.add_argument('--parts', default=','.join(PARTS), help='the parts to run, comma-separated')
  args = p.parse_args(argv)
  unknown = set(args.parts.split(',')) - set(PARTS)
  if unknown:
    p.error(f'unknown parts {sorted(unknown)}: choose from {",".join(PARTS)}')
  return args


class Report:
  """Collects each part's figures, wall-clock and status; writes OUT/<part>.json as it goes."""

  def __init__(self, out: str):
    self.out, self.parts, self.t0 = out, {}, time.time()
    os.makedirs(out, exist_ok=True)
    self.log_file = open(os.path.join(out, 'log.txt'), 'a')

  def log(self, message: str) -> None:
    line = f'{time.strftime("%H:%M:%S")} {message}'
    print(line, flush=True)
    self.log_file.write(line + '\n')
    self.log_file.flush()

  def left(self, budget: float) -> float:
    return budget - (time.time() - self.t0)

  def run(self, name: str, limit: float, fn, *args):
    """fn(limit, *args) -> dict of figures; an exception or an overrun is recorded, not raised."""
    start = time.time()
    self.log(f'== {name} (limit {limit:.0f} s)')
    try:
      figures, status = fn(limit, *args), 'done'
    except PartTimeout as e:
      figures, status = e.figures, f'ran out of time ({limit:.0f} s): {e}'
    except Exception as e:  # every part is independent: record it and go on
      figures, status = {}, f'failed: {type(e).__name__}: {str(e).strip()[:300]}'
    seconds = time.time() - start
    if seconds > limit and status == 'done':
      status = f'done, but over its limit ({seconds:.0f} s > {limit:.0f} s)'
    self.parts[name] = {'status': status, 'seconds': seconds, 'figures': figures}
    with open(os.path.join(self.out, f'{name}.json'), 'w') as f:
      json.dump(self.parts[name], f, indent=2, default=str)
    self.log(f'{name}: {status} in {seconds:.0f} s')
    return figures


class PartTimeout(Exception):
  def __init__(self, message, figures=None):
    super().__init__(message)
    self.figures = figures or {}


def _versions() -> dict:
  from importlib import metadata
  out = {'python': platform.python_version()}
  for name in ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint', 'dm-pix', 'grain', 'torch',
               'torchvision', 'tensorflow-datasets'):
    try:
      out[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
      pass
  return out


def environment(limit, args) -> dict:
  import jax
  device = jax.devices()[0]
  out = {'device': device.device_kind, 'platform': device.platform, 'device_count': jax.device_count(),
         'host_cpus': os.cpu_count(), 'versions': _versions(), 'date': time.strftime('%Y-%m-%d'),
         'command': ' '.join([os.path.basename(sys.executable)] + sys.argv)}
  try:
    smi = subprocess.run(['nvidia-smi', '--query-gpu=name,memory.total,driver_version',
                          '--format=csv,noheader'], capture_output=True, text=True, timeout=20)
    out['nvidia_smi'] = smi.stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    pass
  return out


def _config(args, batch_size: int, **fields):
  from simclr_jax.config_base import apply_overrides, load_config_file
  config = load_config_file(os.path.join(ROOT, 'configs', 'pretrain.py'))
  base = {'dataset': args.dataset, 'data_dir': args.data_dir, 'batch_size': batch_size,
          'dtype': 'bfloat16' if not args.tiny else 'float32'}
  if args.tiny:
    base.update(model='resnet10', width=0.125, train_limit=512, test_split='test[:500]')
  return apply_overrides(config, {**base, **fields})


def _cost(compiled) -> dict:
  analysis = compiled.cost_analysis()
  analysis = analysis[0] if isinstance(analysis, list) else analysis
  return {'flops': float(analysis.get('flops', 0)), 'bytes': float(analysis.get('bytes accessed', 0))}


def _kernels(compiled) -> int:
  """Kernels in the optimised module: fusions and unfused ops of the entry computation."""
  text = compiled.as_text()
  entry = text[text.index('ENTRY'):]
  entry = entry[:entry.index('\n}')]
  skip = ('parameter(', 'constant(', 'get-tuple-element(', 'tuple(', 'bitcast(', 'copy-start',
          'copy-done', 'after-all(')
  lines = [l for l in entry.splitlines()[1:] if '=' in l and not any(k in l for k in skip)]
  return len(lines)


def costs(limit, args) -> dict:
  import jax
  import jax.numpy as jnp
  from simclr_jax.data import augment, pipeline, views as views_lib
  from simclr_jax.stages import pretrain, runner
  batch = 64 if args.tiny else 1024
  config = _config(args, batch)
  aug = augment.settings_from_config(config.augment)
  key = jax.random.PRNGKey(0)
  images = jax.ShapeDtypeStruct((batch, 32, 32, 3), jnp.uint8)
  views = jax.ShapeDtypeStruct((2 * batch, 32, 32, 3), jnp.float32)
  out = {'batch_size': batch, 'dtype': config.dtype, 'width': config.width}
  out['augmentation'] = _cost(jax.jit(lambda k, x: views_lib.make_views(k, x, views_lib.two_views(aug))).lower(
      key, images).compile())
  jitter = lambda k, x: jax.vmap(lambda kk, xx: augment.color_jitter(kk, xx, aug.brightness, aug.contrast,
                                                                     aug.saturation, aug.hue))(
      jax.random.split(k, 2 * batch), x)
  out['colour_jitter'] = _cost(jax.jit(jitter).lower(key, views).compile())
  crop = lambda k, x: jax.vmap(lambda kk, xx: augment.random_resized_crop(kk, xx, aug.crop_scale, aug.crop_ratio))(
      jax.random.split(k, 2 * batch), x)
  out['resized_crop'] = _cost(jax.jit(crop).lower(key, views).compile())
  # The whole step (views, forward, loss, backward, update) as both paths compile it; the batch
  # gather before it is a separate small program.
  import numpy as np
  from simclr_jax.data import sources
  from simclr_jax.core import parallel
  source = sources.in_memory('shapes', sources.Split(np.zeros((batch, 32, 32, 3), np.uint8),
                                                       np.zeros(batch, np.int32)), num_classes=10)
  mesh = parallel.make_mesh()
  inputs = pipeline.DeviceInputs(source, None, mesh, batch, 0)
  task = pretrain.build_task(config, mesh, inputs, None, runner.loop_settings(config, inputs.steps_per_epoch, {}).total_steps)
  model, loss_fn = task.model, task.loss_fn
  variables = jax.eval_shape(lambda: model.init(key, jnp.zeros((2, 32, 32, 3)), train=False))
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
  fwd_bwd = lambda p, s, v, y: jax.value_and_grad(lambda q: loss_fn(q, s, {}, v, y, 0)[0])(p)
  groups = {'global': jax.ShapeDtypeStruct((2, batch, 32, 32, 3), jnp.float32)}  # the two views, as the step holds them
  out['model_forward_backward'] = _cost(jax.jit(fwd_bwd).lower(
      variables['params'], variables['batch_stats'], groups, labels).compile())
  step = inputs.bind(task.step_fn)
  compiled = step.lower(task.state, *next(inputs.batches(0, 1))[1]).compile()
  out['step'] = _cost(compiled)
  out['step_kernels'] = _kernels(compiled)
  model_flops = out['model_forward_backward']['flops']
  out['augmentation_share_of_model'] = {k: out['augmentation'][k] / max(out['model_forward_backward'][k], 1)
                                        for k in ('flops', 'bytes')}
  out['model_tflop_per_step'] = model_flops / 1e12
  return out


def benchmark(limit, args) -> dict:
  if args.tiny:
    extra = ['--tiny', '--no_ablation', '--stream']
  else:  # the breakdown part measures the augmentation's share: no ablation here
    extra = ['--batch_sizes=512,1024', '--dtypes=bfloat16', '--steps=30', '--windows=3', '--warmup=5',
             '--no_ablation', '--stream', '--pipeline_batches=20']
  if args.reference:
    extra += [f'--reference={args.reference}'] + (['--reference_limit=1024'] if args.tiny else [])
  return _benchmark_py('benchmark', extra, limit, args)


def vit(limit, args) -> dict:
  """The SimCLR step on a ViT-S/4 (tiny: vit_nano at width 0.125) through benchmark.py."""
  extra = ['--no_ablation', '--step_only', '--patch_size=4']
  if args.tiny:
    extra += ['--tiny', '--model=vit_nano']
  else:
    extra += ['--model=vit_small', '--batch_sizes=512', '--dtypes=bfloat16', '--steps=20', '--windows=3', '--warmup=3']
  return _benchmark_py('vit', extra, limit, args)


def memory(limit, args) -> dict:
  """Large batches on small memory through benchmark.py --memory (tiny: batch 64 whole, the step
  the other parts have compiled, and in 4 chunks)."""
  if args.tiny:
    extra = ['--tiny', '--memory', '--variants=64:1,64:4', '--steps=1', '--windows=1', '--warmup=0']
  else:
    extra = ['--memory', '--variants=1024:1,1024:4,4096:16,1024:1:remat', '--dtypes=bfloat16', '--steps=5', '--windows=3',
             '--warmup=2']
  return _benchmark_py('memory', extra, limit, args)


def _benchmark_py(name: str, extra: list, limit, args) -> dict:
  """scripts/benchmark.py's JSON with `extra` arguments, and its printed table."""
  path = os.path.join(args.out, f'{name}.raw.json')
  cmd = [sys.executable, os.path.join(ROOT, 'scripts', 'benchmark.py'), f'--dataset={args.dataset}',
         f'--data_dir={args.data_dir}', f'--out={path}'] + extra
  proc = _run(cmd, limit, args)
  if proc.returncode != 0:
    raise RuntimeError(f'benchmark.py exited {proc.returncode}: {proc.stderr.strip()[-300:]}')
  with open(path) as f:
    result = json.load(f)
  os.remove(path)
  result['table'] = proc.stdout.strip().split('\n\n', 1)[-1]
  return result


def _run(cmd, limit, args, env=None):
  try:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(1, limit),
                          env={**os.environ, **(env or {})})
  except subprocess.TimeoutExpired as e:
    raise PartTimeout(f'{os.path.basename(cmd[1])} did not finish') from e


def _time(fn, *args, calls: int = 10, windows: int = 3) -> float:
  """Median seconds per call over windows of `calls` calls, after a warm-up call."""
  import jax
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(windows):
    t0 = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t0) / calls)
  return statistics.median(times)


def breakdown(limit, args) -> dict:
  """Each part of the step as its own compiled function, on real cifar10_jpeg images."""
  import jax
  import jax.numpy as jnp
  import optax
  from simclr_jax.data import augment, pipeline, registry, sources, views as views_lib
  from simclr_jax.methods.simclr import nt_xent
  from simclr_jax.core import parallel
  from simclr_jax.stages import pretrain, runner
  batch = 64 if args.tiny else 1024
  calls = 3 if args.tiny else 20
  config = _config(args, batch)
  source = registry.get(args.dataset, args.data_dir, train_split='train[:512]' if args.tiny else 'train')
  rows = sources.select_rows(source, max(batch * 4, 4096 if not args.tiny else 256))
  mesh = parallel.make_mesh()
  inputs = pipeline.DeviceInputs(source, rows, mesh, batch, 0)
  dataset = source.decode('train').subset(rows)
  total = runner.loop_settings(config, inputs.steps_per_epoch, {}).total_steps
  task = pretrain.build_task(config, mesh, inputs, None, total)
  aug = augment.settings_from_config(config.augment)
  model, loss_fn = task.model, task.loss_fn
  state = task.state
  x = jnp.asarray(dataset.images[:batch])
  y = jnp.asarray(dataset.labels[:batch])
  key = jax.random.PRNGKey(0)
  views_fn = jax.jit(lambda k, im: views_lib.make_views(k, im, views_lib.two_views(aug)))
  views = views_fn(key, x)  # {'global': [2, B, 32, 32, 3]}: SimCLR runs both as one batch
  fwd = jax.jit(lambda p, s, v: model.apply({'params': p, 'batch_stats': s}, v['global'].reshape((-1,) + v['global'].shape[2:]),
                                            train=True, mutable=['batch_stats'])[0]['projection'])
  fwd_bwd = jax.jit(lambda p, s, v, t: jax.value_and_grad(lambda q: loss_fn(q, s, {}, v, t, 0)[0])(p))
  z = fwd(state.params, state.batch_stats, views)
  ntxent = jax.jit(jax.value_and_grad(lambda q: nt_xent(q[:batch], q[batch:], config.temperature)))
  _, grads = fwd_bwd(state.params, state.batch_stats, views, y)
  tx = pretrain.make_tx(runner.optimizer(config, total, inputs.steps_per_epoch), config.online_probe_learning_rate)
  update = jax.jit(lambda g, o, p: (lambda u_o: (optax.apply_updates(p, u_o[0]), u_o[1]))(tx.update(g, o, p)))
  ms = {}
  ms['augmentation'] = _time(views_fn, key, x, calls=calls) * 1e3
  ms['forward'] = _time(fwd, state.params, state.batch_stats, views, calls=calls) * 1e3
  ms['nt_xent'] = _time(ntxent, z, calls=calls) * 1e3
  fb = _time(fwd_bwd, state.params, state.batch_stats, views, y, calls=calls) * 1e3
  ms['backward'] = max(fb - ms['forward'] - ms['nt_xent'], 0.0)
  ms['optimiser_update'] = _time(update, grads, state.opt_state, state.params, calls=calls) * 1e3
  step = inputs.bind(task.step_fn)
  step_args = next(inputs.batches(0, 1))[1]

  def tight(n):
    nonlocal state
    for _ in range(n):
      state, metrics = step(state, *step_args)
    jax.block_until_ready(metrics)

  def loop(n):  # what train_loop.run does around each step: the batch gather and the metric sums
    nonlocal state
    from simclr_jax.train.window import accumulate
    sums = epoch_sums = None
    for _, args in inputs.batches(0, n):
      state, metrics = step(state, *args)
      if sums is None:
        sums = epoch_sums = jax.tree.map(jnp.zeros_like, metrics)
      sums, epoch_sums = accumulate(sums, epoch_sums, metrics)
    jax.block_until_ready((sums, epoch_sums))

  tight(2)
  step_ms = _time(lambda: tight(calls), calls=1) / calls * 1e3
  loop_ms = _time(lambda: loop(calls), calls=1) / calls * 1e3
  ms['idle_gaps'] = max(loop_ms - step_ms, 0.0)
  parts = ('augmentation', 'forward', 'backward', 'nt_xent', 'optimiser_update', 'idle_gaps')
  total = sum(ms[p] for p in parts)
  table = ['| part | ms per step | share |', '|---|---|---|']
  for p in parts:
    table.append(f'| {p} | {ms[p]:.2f} | {100 * ms[p] / total:.1f}% |')
  table.append(f'| sum of the parts | {total:.2f} | 100% |')
  table.append(f'| the whole step, compiled as one, in the training loop | {loop_ms:.2f} | '
               f'{100 * loop_ms / total:.0f}% of the sum |')
  return {'batch_size': batch, 'ms': ms, 'parts_ms': total, 'step_ms': step_ms, 'loop_step_ms': loop_ms,
          'images_per_s': batch / loop_ms * 1e3, 'table': '\n'.join(table),
          'note': 'each part is timed as a separate compiled function on the same batch: augmentation '
                  '(both views), forward (encoder and projector, BatchNorm in training mode), NT-Xent '
                  '(forward and backward on the projections), backward (forward and backward of the '
                  'whole loss less the forward and NT-Xent), optimiser update; idle gaps = the step in '
                  'a loop that does what the training loop does between steps (the batch gather, the '
                  'metric sums), less the step in a tight loop. The whole step differs from the sum '
                  'because XLA fuses across parts'}


def accuracy(limit, args, epoch_seconds) -> dict:
  """The default recipe on cifar10_jpeg for as many epochs as `limit` allows."""
  workdir = args.workdir or os.path.join(os.path.dirname(os.path.abspath(args.out)), 'gpu_report_run')
  overhead = 60.0 if not args.tiny else 30.0  # start, data, compile, the final kNN and probe
  if args.tiny:
    epochs = 1
  else:
    epochs = int(max(1, min(args.max_epochs, (limit - overhead) * 0.9 / max(epoch_seconds, 1e-3))))
  fields = {'dataset': args.dataset, 'data_dir': args.data_dir, 'epochs': epochs, 'log_every_steps': 50}
  if args.tiny:
    fields.update(model='resnet10', width=0.125, train_limit=256, test_split='test[:500]', batch_size=64,
                  log_every_steps=4)
  cmd = [sys.executable, '-m', 'simclr_jax.main', f'--config={ROOT}/configs/pretrain.py',
         f'--workdir={workdir}', '--fresh'] + [f'--config.{k}={v}' for k, v in fields.items()]
  out = {'epochs_planned': epochs, 'epoch_seconds_estimate': epoch_seconds, 'command': ' '.join(cmd[1:]),
         'workdir': workdir}
  proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    stdout, stderr = proc.communicate(timeout=max(1, limit))
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM)  # the run saves a checkpoint and stops
    stdout, stderr = proc.communicate(timeout=120)
    out.update(_partial(workdir))
    raise PartTimeout(f'stopped after {out.get("epochs_done", 0)} of {epochs} epochs', out)
  out['log_tail'] = stdout.strip().splitlines()[-3:]
  if proc.returncode != 0:
    raise RuntimeError(f'pretraining exited {proc.returncode}: {stderr.strip()[-300:]}')
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  out.update({k: results.get(k) for k in ('epochs', 'steps', 'knn_top1', 'linear_top1', 'online_linear_top1',
                                          'images_per_second', 'train_seconds', 'knn_history')})
  return out


def _partial(workdir) -> dict:
  rows = []
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    for line in open(path):
      try:
        rows.append(json.loads(line))
      except ValueError:
        pass
  evals = [r for r in rows if r['kind'] == 'eval']
  return {'epochs_done': evals[-1]['epoch'] if evals else 0,
          'knn_history': [[r['epoch'], r.get('knn_top1')] for r in evals if 'knn_top1' in r]}


def _pct(x):
  return '-' if x is None else f'{100 * x:.1f}%'


def write_markdown(report: Report, args) -> str:
  parts = report.parts
  env = parts.get('environment', {}).get('figures', {})
  lines = ['# simclr_jax GPU report', '',
           f"{env.get('device', '?')} ({env.get('platform', '?')}, {env.get('device_count', '?')} device(s), "
           f"{env.get('host_cpus', '?')} host CPUs), {env.get('date', '?')}, dataset `{args.dataset}`.", '',
           f"Command: `{env.get('command', '')}`", '',
           'Versions: ' + ', '.join(f'{k} {v}' for k, v in env.get('versions', {}).items()), '']
  if env.get('nvidia_smi'):
    lines += [f"nvidia-smi: {env['nvidia_smi']}", '']
  lines += ['| part | status | wall-clock s |', '|---|---|---|']
  for name, part in parts.items():
    lines.append(f"| {name} | {part['status']} | {part['seconds']:.0f} |")
  bench = parts.get('benchmark', {}).get('figures', {})
  if bench:
    lines += ['', '## Speed', '', bench.get('table', '')]
  vit_part = parts.get('vit', {}).get('figures', {})
  if vit_part:
    lines += ['', '## Speed on a Vision Transformer', '', vit_part.get('table', '')]
  memory_part = parts.get('memory', {}).get('figures', {})
  if memory_part:
    lines += ['', '## Large batches on small memory', '', memory_part.get('table', '')]
  cost = parts.get('costs', {}).get('figures', {})
  if cost.get('augmentation'):
    share = cost['augmentation_share_of_model']
    lines += ['', '## Cost analysis (XLA, compiled for this device)', '',
              f"Batch {cost['batch_size']}, width {cost['width']}, {cost['dtype']}: model forward and backward "
              f"{cost['model_forward_backward']['flops'] / 1e12:.2f} TFLOP and "
              f"{cost['model_forward_backward']['bytes'] / 1e9:.1f} GB accessed per step; augmentation "
              f"{cost['augmentation']['flops'] / 1e9:.2f} GFLOP ({100 * share['flops']:.2f}% of the model) and "
              f"{cost['augmentation']['bytes'] / 1e9:.2f} GB ({100 * share['bytes']:.1f}%), of which colour jitter "
              f"{cost['colour_jitter']['flops'] / 1e9:.2f} GFLOP and resized crop {cost['resized_crop']['flops'] / 1e9:.2f} "
              f"GFLOP; the whole step compiles to {cost['step_kernels']} kernels."]
  brk = parts.get('breakdown', {}).get('figures', {})
  if brk.get('table'):
    lines += ['', f"## Where the step's time goes (batch {brk['batch_size']})", '', brk['table'], '',
              brk['note'] + '.']
  acc = parts.get('accuracy', {}).get('figures', {})
  if acc:
    lines += ['', '## Accuracy', '',
              f"Default recipe on `{args.dataset}`, {acc.get('epochs', acc.get('epochs_done'))} epochs "
              f"(planned {acc.get('epochs_planned')}, estimated {acc.get('epoch_seconds_estimate', 0):.2f} s per epoch): "
              f"kNN top-1 {_pct(acc.get('knn_top1'))}, features linear probe {_pct(acc.get('linear_top1'))}, "
              f"online linear probe {_pct(acc.get('online_linear_top1'))}; "
              f"{acc.get('images_per_second') or 0:,.0f} images/s, {acc.get('train_seconds') or 0:.0f} s of training.",
              '', f"kNN history (epoch, top-1): {acc.get('knn_history')}", '', f"`{acc.get('command', '')}`"]
  text = '\n'.join(lines) + '\n'
  with open(os.path.join(args.out, 'report.md'), 'w') as f:
    f.write(text)
  return text


def main(argv=None) -> int:
  args = parse_args(argv)
  if args.tiny:
    args.budget = min(args.budget, 900)
  report = Report(args.out)
  scale = 4.0 if args.tiny else 1.0  # the CPU compiles slowly
  wanted = args.parts.split(',')
  run = lambda name, limit, fn, *a: report.run(name, limit, fn, *a) if name in wanted else None
  run('environment', PART_LIMITS['environment'] * scale, environment, args)
  run('costs', PART_LIMITS['costs'] * scale, costs, args)
  bench = run('benchmark', PART_LIMITS['benchmark'] * scale, benchmark, args)
  brk = run('breakdown', PART_LIMITS['breakdown'] * scale, breakdown, args)
  run('vit', PART_LIMITS['vit'] * scale, vit, args)
  run('memory', PART_LIMITS['memory'] * scale, memory, args)
  epoch_seconds = _epoch_seconds(bench, brk)
  run('accuracy', max(30.0, report.left(args.budget) - 15), accuracy, args, epoch_seconds)
  print(write_markdown(report, args))
  return 0


def _epoch_seconds(bench: dict, brk: dict) -> float:
  """Seconds per 50,000-image epoch at batch 512 from the benchmark (else the breakdown)."""
  rows = [r for r in (bench or {}).get('steps', []) if r['batch_size'] == 512] or (bench or {}).get('steps', [])
  if rows:
    return 50000 / rows[0]['images_per_s']
  if brk:
    return 50000 / brk['images_per_s']
  return 60.0


if __name__ == '__main__':
  sys.exit(main())
