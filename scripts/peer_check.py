"""A method's whole training step beside its PyTorch peer built from lightly's pieces, step by step.

    python scripts/peer_check.py --method=byol
    python scripts/peer_check.py --method=simclr --steps=6 --set width=0.25 --set learning_rate=0.1
    python scripts/peer_check.py --method=byol --broken=ema_first     # a broken peer, to see it caught

The project's compiled step and the peer (tests/peers/lightly_peer.py: torchvision's blocks,
lightly's heads, losses and EMA, torch's SGD) start from the same weights and train on the same
views of one batch of --dataset, in float32, and the peer once more in float64 as the reference.
Prints each step's losses, then each part's largest difference from the float64 peer (ours beside
the float32 peer's own, as a share of how far our step moved it) against the suite's bound, and
exits 1 if a bound fails. Needs the test extra (pip install -e '.[test]': torch, torchvision,
lightly). Methods: those lightly_peer.PEERS has (SimCLR, BYOL, SimSiam, Barlow Twins, DCL so far).
"""
import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tests', 'peers'))


def parse_args(argv):
  import lightly_peer
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--method', required=True, choices=sorted(lightly_peer.PEERS))
  p.add_argument('--steps', type=int, default=4, help='steps of both (the first at the warm-up learning rate of 0)')
  p.add_argument('--dataset', default='cifar10_jpeg')
  p.add_argument('--data_dir', default=os.path.join(ROOT, '..', 'shared', 'data', 'tfds'))
  p.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                 help="a config override after the peer's fields (lightly_peer.PEER_FIELDS), e.g. --set width=0.25")
  p.add_argument('--broken', default='', help="also run a deliberately broken peer (its class's BROKEN, e.g. simclr "
                 "per_view, byol ema_first)")
  p.add_argument('--variance', default='one_pass', choices=('one_pass', 'torch'),
                 help="the peer's BatchNorm statistics: Flax's one-pass form (default) or torch's own")
  args = p.parse_args(argv)
  broken = lightly_peer.PEERS[args.method].BROKEN
  if args.broken and args.broken not in broken:
    p.error(f'--broken={args.broken}: {args.method} has no such variant: choose from {", ".join(broken)}')
  if args.steps < 2:
    p.error(f'--steps={args.steps}: the first step is at learning rate 0; use --steps=2 or more')
  return args


def main(argv=None) -> int:
  args = parse_args(argv)
  import lightly_peer
  from compare import parse_value
  from simclr_jax.data import registry
  fields = {'dataset': args.dataset, 'data_dir': args.data_dir}
  for item in args.set:
    key, sep, value = item.partition('=')
    if not sep:
      raise SystemExit(f'error: --set {item}: write it as FIELD=VALUE, e.g. --set width=0.25')
    fields[key] = parse_value(value)
  try:
    config = lightly_peer.peer_config(args.method, fields)
  except (KeyError, AttributeError) as e:
    raise SystemExit(f'error: --set: {e}: there is no such config field in configs/{args.method}.py') from None
  train = registry.load(config.dataset, config.data_dir, train_limit=config.batch_size, test_split='').train
  ours = lightly_peer.run_ours(config, train.images, train.labels, steps=args.steps)
  peer = lambda **kw: lightly_peer.PEERS[args.method](ours, variance=args.variance, **kw).run(ours['views'])
  exact, peer32 = peer(dtype='float64'), peer()
  print(f'{args.method}: {config.model} width {config.width:g}, batch {config.batch_size} of {config.dataset}, '
        f'{args.steps} steps, learning rate {config.learning_rate:g} x {config.batch_size}/256')
  print(lightly_peer.table(ours, exact, peer32))
  failed = lightly_peer.failures(ours, peer32, exact, peer32)
  print('within every bound' if not failed else f'outside the bounds: {", ".join(failed)}')
  if args.broken:
    caught = lightly_peer.failures(ours, peer(broken=args.broken), exact, peer32)
    print(f'broken peer ({args.broken}): ' + (f'caught: {", ".join(caught)}' if caught else 'NOT caught'))
  return 1 if failed else 0


if __name__ == '__main__':
  sys.exit(main())
