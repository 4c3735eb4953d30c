"""timm beside the CPU build of torch, for the ViT parity test:

    from timm_import import vision_transformer
    model = vision_transformer(img_size=32, patch_size=4, embed_dim=24, depth=4, num_heads=3)

timm imports torchvision, and PyPI's torchvision wheels carry compiled operators linked against
CUDA's torch (libtorch_cuda.so), which the CPU torch of the test extra lacks: the library does not
load, and torchvision's Python then fails registering fake kernels for two of those operators
(`operator torchvision::nms does not exist`). Declaring those two operators' schemas first lets
torchvision's pure-Python parts, all that timm's VisionTransformer needs, import; nothing here
runs them. timm's model itself is used as it is.
"""
import functools

import torch


@functools.lru_cache(None)
def _declare_torchvision_operators():
  try:
    import torchvision  # noqa: F401  (a working torchvision: nothing to declare)
    return None
  except RuntimeError:
    pass
  library = torch.library.Library('torchvision', 'DEF')
  for name in ('nms', 'qnms'):
    library.define(f'{name}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
  return library  # kept alive: dropping the Library object would remove the declarations


def vision_transformer(**kwargs):
  """timm.models.vision_transformer.VisionTransformer with a class token, the class token's features
  out (global_pool='token') and no classifier, built with kwargs (no pretrained weights)."""
  _declare_torchvision_operators()
  from timm.models.vision_transformer import VisionTransformer
  return VisionTransformer(global_pool='token', class_token=True, num_classes=0, **kwargs)
