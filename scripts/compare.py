"""Runs the whole experiment: pretraining with each method, then supervised, finetune and
linear_eval (features and augmented protocols) at several label fractions from the first method,
and writes WORKDIR/report.md with the tables, accuracy plots, each encoder's embedding map, the
first one's retrieval grid, and wall-clocks.

    python scripts/compare.py --workdir=runs/compare --pretrain_epochs=200 --epochs=100 --batch_size=512
    python scripts/compare.py --workdir=runs/methods --methods=simclr,mocov3,byol,simsiam,barlow_twins,vicreg
    python scripts/compare.py --workdir=runs/v2 --methods=pretrain_v2 --finetune_from_head_layer=1 --distill
    python scripts/compare.py --workdir=/tmp/cmp --pretrain_epochs=2 --epochs=2 --batch_size=64 \
        --set dataset=cifar10_jpeg --set data_dir=../shared/data/tfds --set train_limit=1000 --set width=0.125

Each method pretrains from configs/<method>.py with the same data, epochs and batch (--set
overrides apply to every stage); every method after the first is also fine-tuned on all the
labels, for the methods table. --finetune_from_head_layer=1 adds a row fine-tuned from the
projector's first layer (SimCLR v2), and --distill a row distilled, on every training image, from
each fraction's fine-tuned model (from the head layer when asked). Each stage is the CLI's train_and_evaluate; a rerun resumes
finished and unfinished stages alike.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')


def _every_field() -> set:
  """The top-level fields of any stage's or method's config."""
  from simclr_jax import config_base, methods
  fields = {k for stage in config_base.STAGES for k in config_base.base_config(stage)}
  return fields | {k for m in methods.NAMES for k in config_base.method_fields(m)}


def load_config(name: str, overrides: dict):
  """configs/<name>.py with the overrides its stage or method has (a field of another method or
  stage, such as --set temperature=0.2 for BYOL, is left out); an unknown field is an error."""
  from simclr_jax.config_base import apply_overrides, load_config_file
  config = load_config_file(os.path.join(ROOT, 'configs', f'{name}.py'))
  every = _every_field()
  known = {k: v for k, v in overrides.items() if k.split('.')[0] in config or k.split('.')[0] not in every}
  try:
    return apply_overrides(config, known)
  except (KeyError, AttributeError) as e:
    raise SystemExit(f'error: --set: {e}: there is no such config field') from None


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].replace('\n', ' '),
                              formatter_class=argparse.RawDescriptionHelpFormatter,
                              epilog='\n'.join(__doc__.split('\n\n')[1:]))
  p.add_argument('--workdir', required=True)
  p.add_argument('--methods', default='simclr', help='pretraining methods, comma-separated (configs/<method>.py)')
  p.add_argument('--pretrain_epochs', type=int, default=200)
  p.add_argument('--epochs', type=int, default=100, help='epochs of each trained downstream stage')
  p.add_argument('--batch_size', type=int, default=512)
  p.add_argument('--fractions', default='1.0,0.1,0.01')
  p.add_argument('--linear_protocols', default='features,augmented',
                 help='linear_eval protocols to run at each fraction (features, augmented)')
  p.add_argument('--finetune_from_head_layer', type=int, default=0,
                 help='K > 0: also fine-tune from after the projector\'s layer K (SimCLR v2: 1)')
  p.add_argument('--distill', action='store_true',
                 help='also distil each fraction\'s fine-tuned model into a student (configs/distill.py)')
  p.add_argument('--no_pictures', action='store_true', help='skip the embedding maps and retrieval grid')
  p.add_argument('--picture_points', type=int, default=2000, help='test points in each embedding map')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='a config override for every stage, e.g. --set dataset=cifar10_jpeg')
  args = p.parse_args(argv)
  from simclr_jax import methods as methods_lib, validate
  from simclr_jax.train import compile_cache
  from simclr_jax.core import errors, interrupts
  from simclr_jax.report import comparison
  from simclr_jax.stages import starts, workdir as workdir_lib
  interrupts.install()
  compile_cache.enable()  # the stages' programs, compiled once for every rerun  # SIGTERM or SIGINT: exit 75 with one line; the rerun resumes where it stopped
  from simclr_jax.main import train_and_evaluate
  common = {}
  for item in args.set:
    key, _, value = item.partition('=')
    common[key] = parse_value(value)
  methods = [m for m in args.methods.split(',') if m]
  known = methods_lib.NAMES + ('pretrain_v2',)
  unknown = [m for m in methods if m not in known]
  if unknown or not methods:
    print(f'error: --methods={args.methods}: use some of {", ".join(known)}', file=sys.stderr)
    return 2
  fractions = [float(f) for f in args.fractions.split(',')]
  protocols = [x for x in args.linear_protocols.split(',') if x]
  os.makedirs(args.workdir, exist_ok=True)
  wall = {}

  def run(config_name, name, key, **fields):
    config = load_config(config_name, {**common, 'batch_size': args.batch_size, **fields})
    workdir = os.path.join(args.workdir, name)
    starts.fill(config)
    validate.validate_config(config)
    workdir_lib.prepare(workdir, config)
    print(f'== {name}', flush=True)
    t0 = time.time()
    results = train_and_evaluate(config, workdir)
    wall[key] = time.time() - t0
    return results

  pretrain_dir = lambda m: os.path.join(args.workdir, 'pretrain' if m == methods[0] else f'pretrain_{m}')
  try:
    pretrained = {}
    for m in methods:
      name = os.path.basename(pretrain_dir(m))
      config_name = 'pretrain' if m == 'simclr' else m  # pretrain_v2: SimCLR with the v2 head
      pretrained[m] = run(config_name, name, ('pretrain', m), epochs=args.pretrain_epochs)
    runs = {}
    for f in fractions:
      stages = [('supervised', 'supervised', {}), ('finetune', 'finetune', {'init_from': pretrain_dir(methods[0])})]
      stages += [(f'linear_{protocol}', 'linear_eval', {'init_from': pretrain_dir(methods[0]), 'protocol': protocol})
                 for protocol in protocols]
      if args.finetune_from_head_layer:
        stages.append(('finetune_head', 'finetune', {'init_from': pretrain_dir(methods[0]),
                                                     'finetune_from_head_layer': args.finetune_from_head_layer}))
      teacher = 'finetune_head' if args.finetune_from_head_layer else 'finetune'
      if args.distill:
        stages.append(('distilled', 'distill', {'teacher_from': os.path.join(args.workdir, f'{teacher}_{f:g}')}))
      for method, stage, extra in stages:
        runs[(method, f)] = run(stage, f'{method}_{f:g}', (method, f), epochs=args.epochs,
                                label_fraction=f, **extra)
    finetuned = {methods[0]: runs.get(('finetune', 1.0))}  # the methods table: fine-tuned on every label
    for m in methods[1:]:
      finetuned[m] = run('finetune', f'finetune_{m}', ('finetune', m), epochs=args.epochs,
                         init_from=pretrain_dir(m))
    pictures, maps = {}, {}
    if not args.no_pictures:
      from simclr_jax.report.pictures import pictures_of_run
      for m in methods:
        folder = args.workdir if m == methods[0] else os.path.join(args.workdir, f'pictures_{m}')
        made = pictures_of_run(pretrain_dir(m), folder, max_points=args.picture_points)
        maps[m] = made
        if m == methods[0]:
          pictures = made
  except (errors.UserError, errors.NonFiniteError, errors.Preempted) as e:
    if isinstance(e, errors.UserError):
      workdir_lib.release_unstarted()  # a refused stage leaves no workdir behind
    print(f'preempted: {e}' if isinstance(e, errors.Preempted) else f'error: {e}', file=sys.stderr, flush=True)
    return e.exit_code
  from simclr_jax.core.log import plural
  header = (f"dataset {common.get('dataset', 'cifar10')}, batch {args.batch_size}, pretraining "
            f"{plural(args.pretrain_epochs, 'epoch')} ({', '.join(methods)}), downstream "
            f"{plural(args.epochs, 'epoch')}; settings "
            f"{json.dumps(common)}")
  print(comparison.write_report(args.workdir, runs, pretrained[methods[0]], fractions, header, pictures, wall,
                            methods={m: (pretrained[m], finetuned[m], maps.get(m)) for m in methods}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
