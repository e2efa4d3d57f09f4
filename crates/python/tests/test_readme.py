"""The README's PyTorch loop runs as written and trains."""

import contextlib
import io
import os
import re

import torch

from tripmine.pml import AccuracyCalculator

README = os.path.join(os.path.dirname(__file__), "..", "..", "..", "README.md")


def pytorch_loop():
    text = open(README, encoding="utf-8").read()
    loops = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "NeighbourBatchSampler" in b]
    assert len(loops) == 1, "the README has one PyTorch loop"
    return loops[0]


def test_the_readme_pytorch_loop_runs_as_written_and_improves_retrieval():
    torch.manual_seed(0)
    namespace = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(pytorch_loop(), "README.md", "exec"), namespace)
    metrics = eval(printed.getvalue().strip().splitlines()[-1])
    untrained = AccuracyCalculator(k="max_bin_count").get_accuracy(namespace["corpus"], namespace["labels"])
    key = "mean_average_precision_at_r"
    assert metrics[key] > untrained[key] + 0.05, (untrained[key], metrics[key])
