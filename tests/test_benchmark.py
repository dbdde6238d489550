"""Parameter / FLOP counting (utils/flops.py, benchmark.py) and the latency script.

Counting only traces the lazy graph, so all 14 configs are checked against the
parity manifest in a few seconds.
"""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, load_manifest

import jittor as jt
from jittor import nn
from local_configs import list_configs, load_config
from models.builder import EncoderDecoder
from models.ops import fused_kernels, resize
from utils.flops import count_flops, count_params

OFFICIAL = [n for n in list_configs() if n.split(".")[1] in ("NYUDepthv2", "SUNRGBD")]
TOLERANCE = 0.02
PAPER_SHAPE = (480, 640)


def _entry(name):
    entry = load_manifest()["configs"].get(name[len("local_configs."):].replace(".", "/"))
    if entry is None:
        pytest.skip(f"{name} not in the manifest")
    return entry


def _close(ours, ref):
    return abs(ours - ref) <= TOLERANCE * ref


@pytest.mark.parametrize("name", OFFICIAL)
def test_counts_match_manifest(name):
    entry = _entry(name)
    model = EncoderDecoder(load_config(name))

    params = count_params(model)
    ref = entry["param_counts"]
    assert (params["total"], params.get("backbone"), params.get("decode_head")) == \
        (ref["total"], ref["backbone"], ref["decode_head"])

    thop = entry["reference_benchmark_thop"]
    paper = count_flops(model, PAPER_SHAPE)
    assert _close(paper.paper_ops, thop["ops"]), (paper.paper_ops, thop["ops"])
    assert paper.paper_params == thop["params"]

    flops = entry["flops"]
    full = count_flops(model, flops["input_hw"])
    assert _close(full.flops, flops["total"]), (full.flops, flops["total"])
    for ours, theirs in (("convolution", "convolution"), ("linear", "addmm"), ("matmul", "bmm")):
        assert _close(full.by_op[ours], flops["by_op"].get(theirs, 0)), ours
    assert _close(full.by_module["backbone"]["flops"], flops["by_module"]["backbone"]["total"])

    model.eval()            # Jittor's eval() marks every parameter stop_grad
    assert count_params(model)["total"] == ref["total"]


@pytest.mark.parametrize("name", ["local_configs.NYUDepthv2.DFormer_Tiny",
                                  "local_configs.NYUDepthv2.DFormerv2_S"])
def test_counts_do_not_depend_on_kernels(name):
    """The portable (CUDA-style) code paths count the same as the CPU kernels."""
    model = EncoderDecoder(load_config(name))
    fast = count_flops(model, PAPER_SHAPE)
    with fused_kernels(False):
        plain = count_flops(model, PAPER_SHAPE)
    assert (plain.paper_ops, dict(plain.by_op)) == (fast.paper_ops, dict(fast.by_op))


class _Toy(nn.Module):
    """conv -> BN -> ReLU, a Linear called as a module and one used functionally,
    a free matrix product and a bilinear resize."""

    def __init__(self):
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.act = nn.ReLU()
        self.fc = nn.Linear(8, 4)
        self.fc2 = nn.Linear(4, 4)

    def execute(self, x, _unused=None):
        y = self.act(self.bn(self.conv(x)))                       # (1, 8, 4, 4)
        t = self.fc(y.permute(0, 2, 3, 1).reshape((16, 8)))        # (16, 4)
        t = nn.matmul_transpose(t, self.fc2.weight)                # functional Linear
        g = jt.matmul(t.transpose(), t)                            # (4, 4): 16*4*4 MACs
        return resize(y, (16, 16)) + g.sum()


def test_counter_rules_on_toy_model():
    model = _Toy()
    matmul, var_matmul = jt.matmul, jt.Var.__matmul__
    report = count_flops(model, (8, 8))
    conv = 8 * 4 * 4 * 3 * 9
    assert report.by_op["convolution"] == 2 * conv
    assert report.by_op["linear"] == 2 * (16 * 4 * 8 + 16 * 4 * 4)
    assert report.by_op["matmul"] == 2 * 16 * 4 * 4                 # resize not counted
    assert report.paper_ops == conv + 4 * 8 * 16 + 16 * 4 * 8 + 16 * 4 * 4
    assert report.paper_params == sum(int(np.prod(p.shape)) for p in
                                      (model.conv.weight, model.conv.bias, model.bn.weight,
                                       model.bn.bias, model.fc.weight, model.fc.bias,
                                       model.fc2.weight, model.fc2.bias))
    # everything patched is restored and the model still runs
    assert jt.matmul is matmul and jt.Var.__matmul__ is var_matmul
    assert all("execute" not in m.__dict__ for m in model.modules())
    assert list(model(jt.ones((1, 3, 8, 8))).shape) == [1, 8, 16, 16]


def _run(args, timeout):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable] + args, cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_benchmark_script_json():
    res = _run(["benchmark.py", "--config", "local_configs.SUNRGBD.DFormer_Tiny", "--json"], 300)
    for key in ("params", "params_backbone", "params_decode_head", "gflops_paper", "gflops"):
        assert res[key] > 0, key
    assert res["shape"] == [480, 480] and res["shape_paper"] == [480, 640]
    assert res["gflops"] > res["gflops_paper"]


def test_latency_script_json():
    res = _run(["utils/latency.py", "--config", "local_configs.NYUDepthv2.DFormer_Tiny", "--json",
                "--shape", "64", "64", "--iters", "2", "--warmup", "1"], 600)
    for key in ("median_ms", "min_ms", "mean_ms", "fps", "first_call_s"):
        assert isinstance(res[key], float) and math.isfinite(res[key]) and res[key] > 0, key
    assert res["min_ms"] <= res["median_ms"]
    assert res["shape"] == [64, 64] and res["batch"] == 1 and res["device"] in ("cpu", "cuda")
