"""ResNets (CIFAR or ImageNet stem) with torchvision's padding, Vision Transformers (timm's layout), MLP heads, the pretraining model
(encoder, projector, optional predictor and online probe), the classifier, and the losses they are
scored with (models.losses). Every model returns a dict of named outputs so callers read what they
need:

    model = models.PretrainModel(encoder=models.make_encoder('resnet18'), projector=models.MLPHead((2048, 128)))
    out = model.apply(variables, images, train=False)  # {'features', 'projection'}
"""
from simclr_jax.models.resnet import ARCHITECTURES, DTYPES, DTYPE_CHOICES, FORMAT_VERSION, resolve_dtype, BasicBlock, BottleneckBlock, STEMS, CIFAR_STEM_MAX_SIZE, resolve_stem, ResNet, make_resnet  # noqa: F401
from simclr_jax.models.vit import VIT_ARCHITECTURES, ViT, make_vit, patchify  # noqa: F401
from simclr_jax.models.encoders import MODELS, is_vit, make_encoder, encoder_for, encoder_spec, encoder_from_spec  # noqa: F401
from simclr_jax.models.heads import MLPHead, Prototypes, head_layers  # noqa: F401
from simclr_jax.models.networks import PretrainModel, Backbone, Classifier, init_variables  # noqa: F401
