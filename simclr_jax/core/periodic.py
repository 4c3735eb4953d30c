"""The one test for periodic actions (logging, evaluation, checkpoints), after big_vision's itstime.

    if itstime(epoch, every=10, total=200): evaluate()   # epochs 10, 20, ..., 200
    if itstime(step, every=0, total=1000): ...            # only at the last step
    itstime(step, every=-1, total=1000)                   # never
"""


def itstime(count: int, every: int, total: int, last: bool = True) -> bool:
  """True when count (1-based) is a multiple of every > 0, and at count == total when `last`
  (every 0: at the end only; every < 0: never)."""
  if every < 0:
    return False
  return (every > 0 and count % every == 0) or (last and count == total)
