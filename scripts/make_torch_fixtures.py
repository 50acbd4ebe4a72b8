#!/usr/bin/python3
"""Makes the small torchvision fixtures under tests/fixtures/torch (committed; run by hand).

Needs Debian's python3-torch and python3-torchvision (/usr/bin/python3). The networks are
torchvision's own ResNet / BasicBlock / Bottleneck classes with reduced widths and random
weights (BatchNorm statistics randomised too, so that folding is exercised), saved with
torch.save(model.state_dict()) in the zip format, plus one copy in the legacy (pre-1.6) format
that torchvision's 2019 downloads use. For fixed inputs it stores the eval-mode outputs of
layer1..layer4 as .npy.

  /usr/bin/python3 scripts/make_torch_fixtures.py [OUTDIR]
  /usr/bin/python3 scripts/make_torch_fixtures.py --wrn50 DIR   # full-size check, not committed
"""
import os
import sys

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet, wide_resnet50_2


def tiny_resnet(block, layers, stem, planes, width_per_group=64):
    model = ResNet(block, [1, 1, 1, 1], width_per_group=width_per_group)
    model.inplanes = stem
    model.conv1 = nn.Conv2d(3, stem, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1 = nn.BatchNorm2d(stem)
    model.layer1 = model._make_layer(block, planes[0], layers[0])
    model.layer2 = model._make_layer(block, planes[1], layers[1], stride=2)
    model.layer3 = model._make_layer(block, planes[2], layers[2], stride=2)
    model.layer4 = model._make_layer(block, planes[3], layers[3], stride=2)
    model.fc = nn.Linear(planes[3] * block.expansion, 10)
    return model


def randomise_bn(model, gen):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
                m.num_batches_tracked.fill_(7)


def layer_outputs(model, x):
    with torch.no_grad():
        y = model.maxpool(model.relu(model.bn1(model.conv1(x))))
        outs = []
        for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
            y = layer(y)
            outs.append(y)
    return outs


def save_npy(path, array):
    np.save(path, np.ascontiguousarray(array, dtype=np.float32))


def fixtures(out):
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    nets = {
        # resnet18-like: a block without downsample in layer1, several blocks in a layer
        "tiny_basic": tiny_resnet(BasicBlock, [2, 1, 2, 1], 8, [8, 16, 24, 32]),
        # wide_resnet-like: Bottleneck with width_per_group 128
        "tiny_wide": tiny_resnet(Bottleneck, [2, 1, 1, 1], 8, [4, 8, 12, 16], 128),
    }
    inputs = {
        "64x80": torch.randn(1, 3, 64, 80, generator=gen),
        "45x61": torch.randn(1, 3, 45, 61, generator=gen),
    }
    for size, x in inputs.items():
        save_npy(os.path.join(out, f"input_{size}.npy"), x.numpy())
    for name, model in nets.items():
        randomise_bn(model, gen)
        model.eval()
        torch.save(model.state_dict(), os.path.join(out, f"{name}.pth"))
        for size, x in inputs.items():
            for i, y in enumerate(layer_outputs(model, x)):
                save_npy(os.path.join(out, f"{name}_layer{i + 1}_{size}.npy"), y.numpy())
    torch.save(nets["tiny_wide"].state_dict(), os.path.join(out, "tiny_wide_legacy.pth"),
               _use_new_zipfile_serialization=False)
    # Names and shapes of every conv / BatchNorm tensor of the real architectures.
    from torchvision import models
    with open(os.path.join(out, "torchvision_shapes.txt"), "w") as f:
        for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                     "wide_resnet50_2", "wide_resnet101_2"):
            sd = getattr(models, arch)().state_dict()
            for k, v in sd.items():
                if k.endswith("num_batches_tracked") or k.startswith("fc."):
                    continue
                f.write(f"{arch} {k} {','.join(str(d) for d in v.shape)}\n")


def wrn50_check(out):
    """Random-init wide_resnet50_2 at 224: weights, a PNG, and torch's layer2/layer3 for it,
    normalised as patchcore's 'imagenet' (x/255 - mean) / std in float32."""
    import cv2
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(1)
    model = wide_resnet50_2()
    randomise_bn(model, torch.Generator().manual_seed(1))
    model.eval()
    torch.save(model.state_dict(), os.path.join(out, "wrn50_random.pth"))
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    rgb[60:160, 40:120] = (200, 40, 90)  # some structure
    cv2.imwrite(os.path.join(out, "image.png"), rgb[:, :, ::-1])
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    x = ((rgb.astype(np.float32) / np.float32(255.0) - mean) / std).transpose(2, 0, 1)[None]
    outs = layer_outputs(model, torch.from_numpy(np.ascontiguousarray(x)))
    save_npy(os.path.join(out, "expected_layer2.npy"), outs[1].numpy())
    save_npy(os.path.join(out, "expected_layer3.npy"), outs[2].numpy())


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--wrn50":
        wrn50_check(sys.argv[2])
    else:
        here = os.path.dirname(os.path.abspath(__file__))
        fixtures(sys.argv[1] if len(sys.argv) > 1 else
                 os.path.join(here, "..", "tests", "fixtures", "torch"))
