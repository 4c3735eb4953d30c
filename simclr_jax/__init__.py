"""SimCLR pretraining of ResNets in JAX/Flax.

    import simclr_jax
    encoder = simclr_jax.load_encoder('runs/pretrain')      # or an exported .safetensors file
    features = encoder.embed(images_uint8)
    simclr_jax.export_encoder('runs/pretrain', 'encoder.safetensors')
"""


def load_encoder(path, head_layer: int | None = None):
  """See simclr_jax.trained_encoder.load_encoder."""
  from simclr_jax.trained_encoder import load_encoder as _load
  return _load(path, head_layer)


def export_encoder(workdir, path, layout: str = 'flax', head_layer: int | None = None) -> str:
  """See simclr_jax.trained_encoder.export_encoder (layout 'flax' or 'torchvision'; head_layer as
  load_encoder takes it)."""
  from simclr_jax.trained_encoder import export_encoder as _export
  return _export(workdir, path, layout, head_layer)


__all__ = ['load_encoder', 'export_encoder']
