"""Times the compiled pretraining step (two augmented views, forward, NT-Xent, backward, update), each
fed its batch as training feeds it (the device path's batch gather, dispatched before each step,
is inside the timed windows), and, with --reference, the PyTorch reference in the same invocation.

    python scripts/benchmark.py --dataset=cifar10_jpeg --data_dir=../shared/data/tfds \
        --batch_sizes=512,1024 --dtypes=bfloat16,float32 --reference=../shared/reference/simclr_torch.py
    python scripts/benchmark.py --tiny   # CPU smoke run: narrow network, few images
    python scripts/benchmark.py --model=vit_small --patch_size=4 ...  # a ViT's step
    python scripts/benchmark.py --memory --batch_sizes=256,1024,4096 --chunks=1,4,16 --timed_batch_sizes=256

Each figure is the median of --windows timed windows of --steps steps after --warmup steps,
synchronised on the results. Also reported: compile time, cold and warm dataset load, one kNN
evaluation, and the step without augmentation (where the time goes). With --stream: the host
pipeline's decoded images/s with one worker and with --stream_workers (also for --folder at
--folder_size px), and the step fed by the streamed path. Prints a table last and writes --out
(JSON).

With --memory: for each batch size, the step with its batch in each of --chunks chunks
(config.batch_chunks, the gradient cache) and whole with its encoder's blocks rematerialised
(config.remat): the compiled program's memory from XLA's memory analysis (the compiler's buffer
assignment for that backend, an estimate of the device's need: arguments, outputs and temporaries
less what the donated state aliases; the allocator's fragmentation and libraries' workspaces come
on top, as does what lives outside the program, such as the device path's dataset), and for --timed_batch_sizes its images/s and how far its first update
of the model is from the whole batch's (|p_K - p_1| / |p_1 - p_0|, the L2 norms over every
parameter but the online probe's; BatchNorm's statistics per chunk are the only difference), with,
to judge it by, how far the whole batch's update on the next batch lands (next batch difference).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def parse_args(argv):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--dataset', default='cifar10')
  p.add_argument('--data_dir', default='')
  p.add_argument('--train_limit', type=int, default=0)
  p.add_argument('--train_split', default='train', help='a TFDS split string: train[:4096] reads less')
  p.add_argument('--test_split', default='test', help="the kNN timing's test split (a TFDS split string)")
  p.add_argument('--model', default='resnet18')
  p.add_argument('--width', type=float, default=1.0)
  p.add_argument('--patch_size', type=int, default=4, help="a ViT's patch size (--model=vit_tiny, vit_small, ...)")
  p.add_argument('--batch_sizes', default='512,1024')
  p.add_argument('--dtypes', default='bfloat16,float32')
  p.add_argument('--steps', type=int, default=50, help='steps per timed window')
  p.add_argument('--windows', type=int, default=5)
  p.add_argument('--warmup', type=int, default=10)
  p.add_argument('--no_ablation', action='store_true', help='skip the step without augmentation')
  p.add_argument('--step_only', action='store_true', help='time the step alone: no dataset-load or kNN timings')
  p.add_argument('--profile_dir', default='', help='write a jax.profiler trace of a few steps here')
  p.add_argument('--reference', default='', help='path of simclr_torch.py to run in the same invocation')
  p.add_argument('--reference_batch_size', type=int, default=512)
  p.add_argument('--reference_limit', type=int, default=0, help='--limit for the reference train run')
  p.add_argument('--stream', action='store_true',
                 help='also time the streamed input path: the host pipeline alone and the step fed by it')
  p.add_argument('--stream_workers', type=int, default=0, help='grain workers (0: the default)')
  p.add_argument('--folder', default='', help='a folder of images for the host pipeline figure')
  p.add_argument('--folder_size', type=int, default=96)
  p.add_argument('--pipeline_batches', type=int, default=40, help='batches timed per pipeline figure')
  p.add_argument('--out', default='benchmark.json')
  p.add_argument('--tiny', action='store_true', help='CPU smoke settings: width 0.125, 512 images, few steps')
  p.add_argument('--memory', action='store_true',
                 help="each step's compiled memory at --batch_sizes x --chunks, and with --remat (see above)")
  p.add_argument('--chunks', default='1,4,16', help='with --memory: the batch_chunks values')
  p.add_argument('--variants', default='', help='with --memory: BATCH:CHUNKS[:remat],... instead of '
                 '--batch_sizes x --chunks and remat (the GPU report: 1024:1,1024:4,4096:16,1024:1:remat; a batch '
                 'size without its K=1 row has no update difference or x whole batch)')
  p.add_argument('--timed_batch_sizes', default=None,
                 help='with --memory: time only these batch sizes (default: all; a CPU takes minutes a step at 4096)')
  args = p.parse_args(argv)
  if args.tiny:
    if args.model == p.get_default('model'):  # --tiny --model=vit_nano times a tiny ViT
      args.model = 'resnet10'
    args.width, args.train_limit, args.batch_sizes, args.dtypes = 0.125, 512, '64', 'float32'
    args.train_split, args.test_split = 'train[:512]', 'test[:1000]'
    args.steps, args.windows, args.warmup = 2, 2, 1
    args.pipeline_batches, args.stream_workers = 8, 1
    if args.memory:
      args.batch_sizes, args.chunks = '32', '1,4'
  return args


def make_config(args, batch_size: int, dtype: str, **fields):
  from simclr_jax.config_base import apply_overrides, load_config_file
  return apply_overrides(load_config_file(os.path.join(ROOT, 'configs', 'pretrain.py')), {
      'dataset': args.dataset, 'data_dir': args.data_dir, 'train_limit': args.train_limit,
      'model': args.model, 'width': args.width, 'patch_size': args.patch_size, 'dtype': dtype,
      'batch_size': batch_size, 'epochs': 100, 'warmup_epochs': 1.0, 'train_split': args.train_split,
      'test_split': args.test_split, **fields})


def time_dataset_load(args) -> dict:
  from simclr_jax.data import registry
  with tempfile.TemporaryDirectory() as cache:
    old = os.environ.get('SIMCLR_JAX_CACHE')
    os.environ['SIMCLR_JAX_CACHE'] = cache
    try:
      t0 = time.perf_counter()
      registry.load(args.dataset, args.data_dir, args.train_limit, train_split=args.train_split,
                    test_split=args.test_split)
      cold = time.perf_counter() - t0
      t0 = time.perf_counter()
      registry.load(args.dataset, args.data_dir, args.train_limit, train_split=args.train_split,
                    test_split=args.test_split)
      warm = time.perf_counter() - t0
    finally:
      if old is None:
        os.environ.pop('SIMCLR_JAX_CACHE')
      else:
        os.environ['SIMCLR_JAX_CACHE'] = old
  return {'cold_load_s': cold, 'warm_load_s': warm}


def time_windows(args, compiled, state, feed, batch: int):
  """(images/s of each of --windows windows of --steps steps after --warmup steps, the state, the
  last metrics) of a compiled step fed from feed, synchronised on the results."""
  import jax
  for _ in range(args.warmup):
    state, _ = compiled(state, *next(feed))
  jax.block_until_ready(state.params)
  rates, metrics = [], None
  for _ in range(args.windows):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = compiled(state, *next(feed))
    jax.block_until_ready((state.params, metrics))
    rates.append(args.steps * batch / (time.perf_counter() - t0))
  return rates, state, metrics


def time_step(args, config, mesh, inputs, augment_views: bool = True) -> dict:
  import jax
  from simclr_jax.data import augment
  from simclr_jax.stages import pretrain, runner
  make_views = None
  if not augment_views:  # the same step with the views replaced by the normalised images, twice
    aug = augment.settings_from_config(config.augment)
    make_views = lambda key, x: {'global': jax.numpy.stack([augment.eval_view(x, aug)] * 2)}
  total = runner.loop_settings(config, inputs.steps_per_epoch, {}).total_steps
  task = pretrain.build_task(config, mesh, inputs, None, total, make_views=make_views)
  step_fn, feed = inputs.bind(task.step_fn), _feed(inputs)  # each batch gathered as in training
  state = task.state
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, *next(feed)).compile()
  compile_s = time.perf_counter() - t0
  rates, state, metrics = time_windows(args, compiled, state, feed, config.batch_size)
  out = {'images_per_s': statistics.median(rates), 'windows': rates, 'compile_s': compile_s,
         'loss': float(metrics['loss'])}
  if args.profile_dir and augment_views:
    with jax.profiler.trace(os.path.join(args.profile_dir, f'b{config.batch_size}_{config.dtype}')):
      for _ in range(5):
        state, metrics = compiled(state, *next(feed))
      jax.block_until_ready(metrics)
  out['task'], out['state'] = task, state
  return out


def compiled_memory(compiled) -> dict:
  """XLA's memory analysis of a compiled program, in bytes: arguments, outputs, temporaries, the
  outputs that reuse donated arguments (alias), and peak = arguments + outputs + temporaries - alias."""
  m = compiled.memory_analysis()
  out = {k: int(getattr(m, f'{k}_size_in_bytes')) for k in ('argument', 'output', 'temp', 'alias', 'generated_code')}
  out['peak'] = out['argument'] + out['output'] + out['temp'] - out['alias']
  return out


def memory_variants(args) -> list:
  """[(batch size, chunks, remat)] of --variants, or --batch_sizes x (--chunks, and remat whole)."""
  if args.variants:
    return [(int(v.split(':')[0]), int(v.split(':')[1]), v.endswith(':remat')) for v in args.variants.split(',')]
  return [(int(b), k, r) for b in args.batch_sizes.split(',')
          for k, r in [(int(k), False) for k in args.chunks.split(',')] + [(1, True)]]


def memory_rows(args, mesh, source, rows, dtype: str) -> list:
  """--memory: one row per (batch size, chunks, remat), see the module's docstring."""
  import jax
  import numpy as np
  from simclr_jax.data import pipeline
  from simclr_jax.stages import pretrain, runner
  timed = None if args.timed_batch_sizes is None else {int(b) for b in args.timed_batch_sizes.split(',') if b}
  out, batches, reference = [], {}, {}
  for batch, chunks, remat in memory_variants(args):
    if batch not in batches:  # one input path per batch size, its first batch the one compared
      inputs = pipeline.DeviceInputs(source, rows, mesh, batch, 0)
      batches[batch] = (inputs, next(_feed(inputs)))
    inputs, first_batch = batches[batch]
    # no warm-up: the first update, compared below, at the peak learning rate
    config = make_config(args, batch, dtype, batch_chunks=chunks, remat=remat, warmup_epochs=0.0)
    total = runner.loop_settings(config, inputs.steps_per_epoch, {}).total_steps
    task = pretrain.build_task(config, mesh, inputs, None, total)
    step_fn = inputs.bind(task.step_fn)
    fresh = lambda: jax.tree.map(lambda x: x.copy(), task.state)  # the step donates its state
    t0 = time.perf_counter()
    compiled = step_fn.lower(task.state, *first_batch).compile()
    row = {'batch_size': batch, 'dtype': dtype, 'chunks': chunks, 'remat': remat,
           'compile_s': time.perf_counter() - t0, 'memory': compiled_memory(compiled)}
    if timed is None or batch in timed:
      model_params = lambda p: [np.asarray(x, np.float64) for x in
                                jax.tree.leaves({k: v for k, v in p.items() if k != 'online_probe'})]
      initial = model_params(task.state.params)
      after = model_params(compiled(fresh(), *first_batch)[0].params)
      norm = lambda xs: float(np.sqrt(sum(np.sum(x * x) for x in xs)))
      difference = lambda a, r: norm([x - y for x, y in zip(a, r)]) / norm([y - i for y, i in zip(r, initial)])
      if chunks == 1 and not remat:
        reference[batch] = after
        # the scale to judge it by: how far the whole step on the next batch lands from it
        feed = _feed(inputs)
        next(feed)
        row['next_batch_difference'] = difference(model_params(compiled(fresh(), *next(feed))[0].params), after)
      if batch in reference:
        row['update_difference'] = difference(after, reference[batch])
      rates, _, _ = time_windows(args, compiled, fresh(), _feed(inputs), batch)
      row['images_per_s'] = statistics.median(rates)
    out.append(row)
    print(json.dumps(row), flush=True)
    del compiled, task, step_fn
  return out


def format_memory(result) -> str:
  gib = lambda b: f'{b / 2**30:.2f}'
  lines = [f"simclr_jax step memory (XLA memory analysis) on {result['device']} x{result['devices']}, "
           f"{result['dataset']}, {result['model']} width {result['width']}, jax {result['jax']}, {result['date']}", '',
           '| batch | dtype | chunks | remat | peak GiB | temporaries GiB | arguments GiB | x whole batch | images/s | '
           'update difference | next batch difference |', '|---|---|---|---|---|---|---|---|---|---|---|']
  whole = {(r['batch_size'], r['dtype']): r['memory']['peak'] for r in result['memory'] if r['chunks'] == 1 and not r['remat']}
  for r in result['memory']:
    m, key = r['memory'], (r['batch_size'], r['dtype'])
    cells = [r['batch_size'], r['dtype'], r['chunks'], 'yes' if r['remat'] else 'no', gib(m['peak']), gib(m['temp']),
             gib(m['argument']), f"{m['peak'] / whole[key]:.2f}" if key in whole else '-',
             f"{r['images_per_s']:,.1f}" if 'images_per_s' in r else '-',
             f"{r['update_difference']:.2g}" if 'update_difference' in r else '-',
             f"{r['next_batch_difference']:.2g}" if 'next_batch_difference' in r else '-']
    lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
  return '\n'.join(lines)


def time_knn(config, inputs, task, state) -> dict:
  """Seconds of one kNN evaluation (embedding both splits, then the vote), first call and warm."""
  from simclr_jax.evals import EvalContext, KnnEvaluator
  knn = KnnEvaluator('knn', config.evals.knn)
  out = {}
  for name in ('knn_first_s', 'knn_s'):  # the first call compiles
    t0 = time.perf_counter()
    knn(EvalContext(task.infer, state.variables, inputs, config.eval_batch_size))
    out[name] = time.perf_counter() - t0
  return out


def _feed(inputs):
  """The step's arguments as training makes them, epoch after epoch (the device path gathers
  each batch on the devices; the streamed path reads it)."""
  for _, args in inputs.batches(0, inputs.steps_per_epoch * 1000):
    yield args


def time_pipeline(source, rows, mesh, batch: int, workers: int, batches: int) -> dict:
  """Decoded images/s of the host pipeline alone (grain workers, no training step)."""
  import jax
  from simclr_jax.data import pipeline
  inputs = pipeline.StreamInputs(source, rows, mesh, batch, 0, workers)
  feed = _feed(inputs)
  for _ in range(2 * workers + 1):  # the workers start; what they buffered meanwhile is not timed
    jax.block_until_ready(next(feed))
  t0 = time.perf_counter()
  for _ in range(batches):
    x, _ = next(feed)
  jax.block_until_ready(x)
  seconds = time.perf_counter() - t0
  inputs.close()
  rate = batches * batch / seconds
  return {'workers': workers, 'images_per_s': rate, 'per_worker': rate / workers,
          'image_size': source.image_size, 'dataset': source.name}


def time_stream_step(args, config, mesh, source, rows, workers: int) -> dict:
  """images/s of the full step fed by the streamed path (host pipeline included)."""
  import jax
  from simclr_jax.data import pipeline
  from simclr_jax.stages import pretrain, runner
  inputs = pipeline.StreamInputs(source, rows, mesh, config.batch_size, config.seed, workers)
  task = pretrain.build_task(config, mesh, inputs, None, runner.loop_settings(config, inputs.steps_per_epoch, {}).total_steps)
  step, state, feed = inputs.bind(task.step_fn), task.state, _feed(inputs)
  for _ in range(max(1, args.warmup)):
    state, metrics = step(state, *next(feed))
  jax.block_until_ready(metrics)
  rates = []
  for _ in range(args.windows):
    t0 = time.perf_counter()
    for _ in range(args.steps):
      state, metrics = step(state, *next(feed))
    jax.block_until_ready((state.params, metrics))
    rates.append(args.steps * config.batch_size / (time.perf_counter() - t0))
  inputs.close()
  return {'images_per_s': statistics.median(rates), 'windows': rates, 'workers': workers}


def time_streaming(args, mesh, first_config) -> dict:
  from simclr_jax.data import pipeline, registry, sources
  workers = args.stream_workers or pipeline.default_workers()
  source = registry.get(args.dataset, args.data_dir, train_split=args.train_split, test_split=args.test_split)
  rows = sources.select_rows(source, args.train_limit)
  out = {'pipeline': [], 'step': None}
  batch = first_config.batch_size
  for w in sorted({1, workers}):
    out['pipeline'].append(time_pipeline(source, rows, mesh, batch, w, args.pipeline_batches))
  if args.folder:
    folder = registry.get(f'folder:{args.folder}', image_size=args.folder_size)
    for w in sorted({1, workers}):
      out['pipeline'].append(time_pipeline(folder, None, mesh, batch, w, args.pipeline_batches))
  out['step'] = time_stream_step(args, first_config, mesh, source, rows, workers)
  return out


def run_reference(args) -> dict:
  """The PyTorch reference in this invocation: its usual pipeline (torchvision augmentation in
  DataLoader workers, bf16; an epoch of warm-up, then an epoch timed) and its compute ceiling
  (random tensors on the device, bf16, channels_last, torch.compile)."""
  def call(*extra):
    cmd = [sys.executable, args.reference, *extra, '--batch-size', str(args.reference_batch_size)]
    if args.data_dir:
      cmd += ['--data-dir', args.data_dir]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
      raise SystemExit(f'error: the reference failed ({" ".join(cmd)}): {proc.stderr.strip()[-500:]}')
    return json.loads(proc.stdout.strip().splitlines()[-1])
  limit = ['--limit', str(args.reference_limit)] if args.reference_limit else []
  pipeline = call('bench', '--pipeline', 'cpu', '--amp', '--dataset', args.dataset, *limit)
  ceiling = call('bench', '--pipeline', 'synthetic', '--amp', '--channels-last', '--compile')
  return {'pipeline': pipeline, 'ceiling': ceiling}


def main(argv=None) -> int:
  args = parse_args(argv)
  import jax
  from simclr_jax.data import pipeline, registry, sources
  from simclr_jax.core import parallel
  mesh = parallel.make_mesh()
  result = {'device': jax.devices()[0].device_kind, 'devices': len(jax.devices()), 'jax': jax.__version__,
            'date': time.strftime('%Y-%m-%d'), 'argv': sys.argv[1:], 'dataset': args.dataset,
            'model': args.model, 'width': args.width, 'steps': []}
  if not args.step_only and not args.memory:
    result.update(time_dataset_load(args))
  source = registry.get(args.dataset, args.data_dir, train_split=args.train_split, test_split=args.test_split)
  rows = sources.select_rows(source, args.train_limit)
  knn_done = args.step_only
  if args.memory:
    result['memory'] = [r for dtype in args.dtypes.split(',') for r in memory_rows(args, mesh, source, rows, dtype)]
    with open(args.out, 'w') as f:
      json.dump(result, f, indent=2)
    print(format_memory(result))
    return 0
  for dtype in args.dtypes.split(','):
    for batch in (int(b) for b in args.batch_sizes.split(',')):
      config = make_config(args, batch, dtype)
      inputs = pipeline.DeviceInputs(source, rows, mesh, batch, config.seed)
      n = inputs.num_examples
      r = time_step(args, config, mesh, inputs)
      row = {'batch_size': batch, 'dtype': dtype, 'images_per_s': r['images_per_s'], 'windows': r['windows'],
             'compile_s': r['compile_s'], 'epoch_s': n / r['images_per_s']}
      if not args.no_ablation:
        plain = time_step(args, config, mesh, inputs, augment_views=False)
        row['no_augment_images_per_s'] = plain['images_per_s']
        row['augment_share'] = 1 - r['images_per_s'] / plain['images_per_s']
      if not knn_done:
        result.update(time_knn(config, inputs, r['task'], r['state']))
        knn_done = True
      result['steps'].append(row)
      print(json.dumps(row), flush=True)
  if args.stream:
    result['stream'] = time_streaming(args, mesh, make_config(args, int(args.batch_sizes.split(',')[0]),
                                                               args.dtypes.split(',')[0]))
    print(json.dumps(result['stream']), flush=True)
  if args.reference:
    result['reference'] = run_reference(args)
    pipe, ceil = result['reference']['pipeline']['images_per_s'], result['reference']['ceiling']['images_per_s']
    for row in result['steps']:
      row['x_torch_pipeline'] = row['images_per_s'] / pipe
      row['x_torch_ceiling'] = row['images_per_s'] / ceil
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=2)
  print(format_table(result))
  return 0


def format_table(result) -> str:
  lines = [f"simclr_jax pretraining step on {result['device']} x{result['devices']}, {result['dataset']}, "
           f"{result['model']} width {result['width']}, jax {result['jax']}, {result['date']}"]
  if 'cold_load_s' in result:  # not with --step_only
    lines.append(f"dataset load: cold {result['cold_load_s']:.1f} s, warm {result['warm_load_s']:.2f} s; "
                 f"kNN eval {result.get('knn_s', float('nan')):.2f} s (first call {result.get('knn_first_s', float('nan')):.1f} s)")
  ref = result.get('reference')
  if ref:
    lines.append(f"PyTorch reference: pipeline {ref['pipeline']['images_per_s']:,.0f} img/s "
                 f"(bench --pipeline cpu --amp: DataLoader workers, an epoch timed after an epoch of "
                 f"warm-up), compute ceiling {ref['ceiling']['images_per_s']:,.0f} img/s "
                 f"(bench synthetic, amp, channels_last, compile)")
  head = '| batch | dtype | images/s | epoch s | no-augment images/s | augment share | compile s |'
  if ref:
    head += ' x torch pipeline | x torch ceiling |'
  lines += ['', head, '|' + '---|' * (head.count('|') - 1)]
  for r in result['steps']:
    cells = [str(r['batch_size']), r['dtype'], f"{r['images_per_s']:,.0f}", f"{r['epoch_s']:.2f}",
             f"{r.get('no_augment_images_per_s', float('nan')):,.0f}", f"{100 * r.get('augment_share', float('nan')):.0f}%",
             f"{r['compile_s']:.1f}"]
    if ref:
      cells += [f"{r['x_torch_pipeline']:.1f}", f"{r['x_torch_ceiling']:.2f}"]
    lines.append('| ' + ' | '.join(cells) + ' |')
  stream = result.get('stream')
  if stream:
    device_rate = result['steps'][0]['images_per_s']
    lines += ['', f"streamed path ({stream['step']['workers']} workers): "
              f"{stream['step']['images_per_s']:,.0f} images/s for the step above "
              f"(device path {device_rate:,.0f})", '',
              '| host pipeline | image size | workers | decoded images/s | per worker |', '|---|---|---|---|---|']
    for r in stream['pipeline']:
      lines.append(f"| {r['dataset']} | {r['image_size']} | {r['workers']} | {r['images_per_s']:,.0f} | "
                   f"{r['per_worker']:,.0f} |")
  return '\n'.join(lines)


if __name__ == '__main__':
  sys.exit(main())
