"""Runs the whole experiment: pretraining, then supervised, finetune and linear_eval (features and
augmented protocols) at several label fractions, and writes WORKDIR/report.md with a table,
accuracy plots, the pretrained encoder's embedding map and retrieval grid, and wall-clocks.

    python scripts/compare.py --workdir=runs/compare --pretrain_epochs=200 --epochs=100 --batch_size=512
    python scripts/compare.py --workdir=/tmp/cmp --pretrain_epochs=2 --epochs=2 --batch_size=64 \
        --set dataset=cifar10_jpeg --set data_dir=../shared/data/tfds --set train_limit=1000 --set width=0.125

Each stage is the CLI's train_and_evaluate on configs/<stage>.py; a rerun resumes finished and
unfinished stages alike.
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


def load_config(stage: str, overrides: dict):
  from simclr_jax.config_base import apply_overrides, load_config_file
  config = load_config_file(os.path.join(ROOT, 'configs', f'{stage}.py'))
  try:
    return apply_overrides(config, overrides)
  except (KeyError, AttributeError) as e:
    raise SystemExit(f'error: --set: {e}: there is no such config field') from None


def parse_value(text: str):
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--workdir', required=True)
  p.add_argument('--pretrain_epochs', type=int, default=200)
  p.add_argument('--epochs', type=int, default=100, help='epochs of each trained downstream stage')
  p.add_argument('--batch_size', type=int, default=512)
  p.add_argument('--fractions', default='1.0,0.1,0.01')
  p.add_argument('--linear_protocols', default='features,augmented',
                 help='linear_eval protocols to run at each fraction (features, augmented)')
  p.add_argument('--no_pictures', action='store_true', help='skip the embedding map and retrieval grid')
  p.add_argument('--picture_points', type=int, default=2000, help='test points in the embedding map')
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help='a config override for every stage, e.g. --set dataset=cifar10_jpeg')
  args = p.parse_args(argv)
  from simclr_jax import errors, report, validate, workdir as workdir_lib
  from simclr_jax.main import train_and_evaluate
  common = {}
  for item in args.set:
    key, _, value = item.partition('=')
    common[key] = parse_value(value)
  fractions = [float(f) for f in args.fractions.split(',')]
  protocols = [x for x in args.linear_protocols.split(',') if x]
  os.makedirs(args.workdir, exist_ok=True)
  wall = {}

  def run(stage, name, key, **fields):
    config = load_config(stage, {**common, 'batch_size': args.batch_size, **fields})
    workdir = os.path.join(args.workdir, name)
    validate.validate_config(config)
    workdir_lib.prepare(workdir, config)
    print(f'== {name}', flush=True)
    t0 = time.time()
    results = train_and_evaluate(config, workdir)
    wall[key] = time.time() - t0
    return results

  try:
    pretrain_dir = os.path.join(args.workdir, 'pretrain')
    pretrain = run('pretrain', 'pretrain', ('pretrain', 1.0), epochs=args.pretrain_epochs)
    runs = {}
    for f in fractions:
      stages = [('supervised', 'supervised', {}), ('finetune', 'finetune', {'init_from': pretrain_dir})]
      stages += [(f'linear_{protocol}', 'linear_eval', {'init_from': pretrain_dir, 'protocol': protocol})
                 for protocol in protocols]
      for method, stage, extra in stages:
        runs[(method, f)] = run(stage, f'{method}_{f:g}', (method, f), epochs=args.epochs,
                                label_fraction=f, **extra)
    pictures = {}
    if not args.no_pictures:
      from simclr_jax.pictures import pictures_of_run
      pictures = pictures_of_run(pretrain_dir, args.workdir, max_points=args.picture_points)
  except errors.UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  header = (f"dataset {common.get('dataset', 'cifar10')}, batch {args.batch_size}, pretraining "
            f"{args.pretrain_epochs} epochs, downstream {args.epochs} epochs; settings "
            f"{json.dumps(common)}")
  print(report.write_report(args.workdir, runs, pretrain, fractions, header, pictures, wall))
  return 0


if __name__ == '__main__':
  sys.exit(main())
