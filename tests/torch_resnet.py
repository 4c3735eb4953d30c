"""A PyTorch ResNet with torchvision's module names, padding and forward (torchvision/models/resnet.py:
conv1, bn1, layer1..4 of BasicBlock or Bottleneck with conv/bn 1-3 and downsample.0/1), written out
so the parity test needs only torch: torchvision itself does not import beside the CPU build of
torch that the CI machine installs. With torchvision installed, test_torch_parity also checks
torchvision.models.resnet18 itself.

    model = resnet(layers=(2, 2, 2, 2), width=64, cifar_stem=True)   # fc left out: features
"""
import torch
from torch import nn


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or inplanes != planes:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, inplanes, planes, stride=1):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * 4)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = None
    if stride != 1 or inplanes != planes * 4:
      self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                      nn.BatchNorm2d(planes * 4))

  def forward(self, x):
    identity = x if self.downsample is None else self.downsample(x)
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet(nn.Module):
  def __init__(self, block, layers, width=64, cifar_stem=False):
    super().__init__()
    self.conv1 = (nn.Conv2d(3, width, 3, 1, padding=1, bias=False) if cifar_stem
                  else nn.Conv2d(3, width, 7, 2, padding=3, bias=False))
    self.bn1 = nn.BatchNorm2d(width)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.Identity() if cifar_stem else nn.MaxPool2d(3, 2, padding=1)
    inplanes = width
    for i, n in enumerate(layers):
      planes, blocks = width * 2 ** i, []
      for b in range(n):
        blocks.append(block(inplanes, planes, 2 if i > 0 and b == 0 else 1))
        inplanes = planes * block.expansion
      setattr(self, f'layer{i + 1}', nn.Sequential(*blocks))

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f'layer{i}')(x)
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


def resnet(layers, width=64, bottleneck=False, cifar_stem=True) -> ResNet:
  return ResNet(Bottleneck if bottleneck else BasicBlock, layers, width, cifar_stem)
