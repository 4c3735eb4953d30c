"""SimCLR pretraining of CIFAR ResNets in JAX/Flax.

    import simclr_jax
    encoder = simclr_jax.load_encoder('runs/pretrain')
    features = encoder.embed(images_uint8)
"""


def load_encoder(path: str):
  """See simclr_jax.encoder.load_encoder."""
  from simclr_jax.encoder import load_encoder as _load
  return _load(path)


__all__ = ['load_encoder']
