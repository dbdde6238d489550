"""Smoke test of the PSA, CC and PointRend decode heads (seconds on a CPU).

    python tools/mmseg_heads_smoke.py

Checks, each reported as one PASS/FAIL line:

* each head against mmsegmentation's own code: the fixtures in
  ``tests/fixtures/mmseg_heads`` (random weights, inputs and mmseg 1.2.2's outputs,
  written by ``gen_mmseg_heads.py`` beside them) are loaded strictly through
  ``utils.checkpoint`` into heads built from the same mmseg arguments; the state-dict
  keys and shapes must be mmseg's and every output must match within
  1e-4 * max(1, |ref|) (PointRend: coarse logits, point logits at fixed points, point
  loss with ignored labels, the subdivision output; also with ``align_corners=True``
  and with ``scale_factor=1.5`` over three subdivision steps);
* the attention ops against direct loop-based numpy computations on small tensors:
  the PSA mask op (collect and distribute) and the full PSA aggregation, criss-cross
  attention (with the self position masked in the vertical branch), PointRend's
  bilinear point sampling and uncertainty-based test points;
* each head (``C.decoder = "psa" | "cc" | "point"``) on DFormer-Tiny: one training
  step (forward + backward, finite loss and gradients) and inference at an odd
  input size (logits at the input size).

Exit status 0 when everything passes, 1 otherwise; the last line is ``N passed, N failed``.
The loop references are importable (``tests/test_heads.py`` uses them).
"""
import os
import sys
import traceback

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __package__ in (None, ""):  # run as a script
    import repo_root  # noqa: F401  (the repository root onto sys.path)

from utils import runtime  # noqa: E402
runtime.setup()  # before jittor is imported

HEADS = ("psa", "cc", "point")
FIXTURES = os.path.join(REPO, "tests", "fixtures", "mmseg_heads")
MMSEG_FIXTURES = ("psa_bidirection", "psa_collect_compact", "psa_distribute_concat", "cc_single",
                  "cc_dilated_concat", "pointrend", "pointrend_align_corners",
                  "pointrend_scale_1_5")


# ----------------------------------------------------------------------------- loop references

def loop_psa_dense(y, mask_size, psa_type):
    """Dense (H*W, H, W) attention map from a window prediction y (mh*mw, H, W), by loops.

    collect: channel = other position q, spatial = position p (weight p gives to q);
    distribute: channel = position p, spatial = other position q.
    """
    m, h, w = y.shape
    mh, mw = mask_size
    half_h, half_w = (mh - 1) // 2, (mw - 1) // 2
    out = np.zeros((h * w, h, w), dtype=np.float64)
    for ph in range(h):
        for pw in range(w):
            for i in range(mh):
                for j in range(mw):
                    qh, qw = ph + i - half_h, pw + j - half_w
                    if not (0 <= qh < h and 0 <= qw < w):
                        continue
                    value = y[i * mw + j, ph, pw]
                    if psa_type == "collect":
                        out[qh * w + qw, ph, pw] = value
                    else:
                        out[ph * w + pw, qh, qw] = value
    return out


def loop_psa_aggregate(x, y, mask_size, psa_type, softmax=True):
    """PSA aggregation of x (C, H, W) by loops: out[:, s] = sum_o x[:, o] * A[o, s]."""
    c, h, w = x.shape
    dense = loop_psa_dense(y, mask_size, psa_type).reshape(h * w, h * w)
    if softmax:
        dense = np.exp(dense - dense.max(axis=0, keepdims=True))
        dense = dense / dense.sum(axis=0, keepdims=True)
    xf = x.reshape(c, h * w)
    out = np.zeros((c, h * w))
    for s in range(h * w):
        for o in range(h * w):
            out[:, s] += xf[:, o] * dense[o, s]
    return out.reshape(c, h, w)


def loop_criss_cross(q, k, v):
    """Criss-cross attention of one image by loops: q, k (C', H, W), v (C, H, W)."""
    _, h, w = q.shape
    out = np.zeros(v.shape, dtype=np.float64)
    for y in range(h):
        for x in range(w):
            scores, values = [], []
            for i in range(h):
                if i == y:
                    continue  # the vertical branch skips the position itself
                scores.append(float(np.dot(q[:, y, x], k[:, i, x])))
                values.append(v[:, i, x])
            for j in range(w):
                scores.append(float(np.dot(q[:, y, x], k[:, y, j])))
                values.append(v[:, y, j])
            s = np.array(scores)
            a = np.exp(s - s.max())
            a /= a.sum()
            out[:, y, x] = sum(ai * vi for ai, vi in zip(a, values))
    return out


def loop_nearest_sample(label, points, align_corners):
    """grid_sample(nearest, zeros) of an integer map (H, W) at (P, 2) points in [0, 1]: the
    float32 pixel coordinate rounded half to even (numpy's rint), 0 outside."""
    h, w = label.shape
    out = np.zeros(len(points), dtype=label.dtype)
    for n, point in enumerate(points.astype(np.float32)):
        index = []
        for p, size in zip(point, (w, h)):
            g = p * np.float32(2) - np.float32(1)
            if align_corners:
                index.append(int(np.rint((g + np.float32(1)) * np.float32((size - 1) / 2))))
            else:
                index.append(int(np.rint((g + np.float32(1)) * np.float32(size / 2) - np.float32(0.5))))
        ix, iy = index
        if 0 <= ix < w and 0 <= iy < h:
            out[n] = label[iy, ix]
    return out


def loop_point_sample(x, points):
    """grid_sample(bilinear, zeros, align_corners=False) of x (C, H, W) at (P, 2) points in [0, 1]."""
    c, h, w = x.shape
    out = np.zeros((c, len(points)))
    for n, (px, py) in enumerate(points):
        fx, fy = px * w - 0.5, py * h - 0.5
        x0, y0 = int(np.floor(fx)), int(np.floor(fy))
        for yy in (y0, y0 + 1):
            for xx in (x0, x0 + 1):
                if 0 <= yy < h and 0 <= xx < w:
                    weight = (1 - abs(fx - xx)) * (1 - abs(fy - yy))
                    out[:, n] += weight * x[:, yy, xx]
    return out


# ----------------------------------------------------------------------------- checks

def check_psa_mask():
    import jittor as jt
    from models.decoders.psa_head import psa_mask
    rng = np.random.default_rng(0)
    for (h, w), mask in (((3, 4), (5, 7)), ((4, 3), (3, 3)), ((2, 5), (5, 9))):
        y = rng.standard_normal((2, mask[0] * mask[1], h, w)).astype(np.float32)
        for kind in ("collect", "distribute"):
            got = psa_mask(jt.array(y), mask, kind).numpy()
            for b in range(2):
                want = loop_psa_dense(y[b], mask, kind)
                assert np.allclose(got[b], want, atol=1e-6), f"psa_mask {kind} {h}x{w} mask {mask}"


def check_psa_aggregate():
    import jittor as jt
    from models.decoders.psa_head import PSAHead
    rng = np.random.default_rng(1)
    h, w, mask = 3, 5, (5, 9)
    head = PSAHead(mask_size=mask, shrink_factor=1, in_channels=4, in_index=0, channels=6,
                   num_classes=3)
    x = rng.standard_normal((1, 6, h, w)).astype(np.float32)
    for kind, transpose in (("collect", False), ("distribute", True)):
        attention = head.attention if kind == "collect" else head.attention_p
        got = head._attend(jt.array(x), attention, kind, transpose).numpy()[0]
        y = attention(jt.array(x)).numpy()[0]
        want = loop_psa_aggregate(x[0], y, mask, kind)
        assert np.allclose(got, want, atol=1e-4), f"PSA {kind} aggregation differs"


def check_criss_cross():
    import jittor as jt
    from models.decoders.cc_head import criss_cross
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    k = rng.standard_normal((2, 3, 4, 5)).astype(np.float32)
    v = rng.standard_normal((2, 6, 4, 5)).astype(np.float32)
    got = criss_cross(jt.array(q), jt.array(k), jt.array(v)).numpy()
    for b in range(2):
        assert np.allclose(got[b], loop_criss_cross(q[b], k[b], v[b]), atol=1e-5), "criss-cross differs"


def check_point_ops():
    import jittor as jt
    from models.decoders.point_head import get_points_test, nearest_sample, point_sample
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    pts = rng.uniform(0, 1, (2, 11, 2)).astype(np.float32)
    pts[0, 0] = (0.0, 0.0)
    pts[0, 1] = (0.999, 0.999)
    got = point_sample(jt.array(x), jt.array(pts)).numpy()
    for b in range(2):
        assert np.allclose(got[b], loop_point_sample(x[b], pts[b]), atol=1e-5), "point_sample differs"
    # labels: ties (pixel edges / centres, both borders) where rounding half to even matters
    label = rng.integers(1, 200, (2, 6, 8)).astype(np.int32)
    edges = np.concatenate([np.arange(9) / 8, np.arange(8) / 7, (np.arange(7) + 0.5) / 7])
    grid = np.stack(np.meshgrid(edges, np.concatenate([np.arange(7) / 6, np.arange(6) / 5])),
                    -1).reshape(1, -1, 2)
    lpts = np.concatenate([grid, rng.uniform(0, 1, (1, grid.shape[1], 2))]).astype(np.float32)
    for align_corners in (False, True):
        got = nearest_sample(jt.array(label), jt.array(lpts), align_corners).numpy()
        for b in range(2):
            want = loop_nearest_sample(label[b], lpts[b], align_corners)
            assert (got[b] == want).all(), f"nearest_sample (align_corners={align_corners}) differs"
    index, points = get_points_test(jt.array(x), 6)
    index, points = index.numpy(), points.numpy()
    top = np.sort(x, axis=1)
    unc = (top[:, -2] - top[:, -1]).reshape(2, -1)
    for b in range(2):
        assert np.allclose(np.sort(unc[b][index[b]]), np.sort(unc[b])[-6:]), "test points not the most uncertain"
        rows, cols = index[b] // 7, index[b] % 7
        assert np.allclose(points[b, :, 0], (cols + 0.5) / 7) and np.allclose(points[b, :, 1], (rows + 0.5) / 5)


# ----------------------------------------------------------------------------- mmseg parity

def read_fixture(name):
    """(mmseg config, mmseg state dict, arrays) of one fixture."""
    import json
    with open(os.path.join(FIXTURES, "meta.json")) as f:
        meta = json.load(f)[name]
    arrays = dict(np.load(os.path.join(FIXTURES, name + ".npz")))
    state = {k[2:]: v for k, v in arrays.items() if k.startswith("w/")}
    assert [k for k, _ in meta["keys"]] == list(state), f"{name}: fixture keys out of order"
    return meta, state, arrays


def build_from_fixture(name, meta):
    """Our head built from the fixture's mmseg arguments."""
    from models.decoders import FPN, CCHead, FPNHead, PointHead, PointRendHead, PSAHead
    cfg = meta["config"]
    if name.startswith("psa"):
        return PSAHead(**cfg)
    if name.startswith("cc"):
        return CCHead(**cfg)
    coarse, point = cfg["decode_head"]
    return PointRendHead(FPN(**cfg["neck"]), FPNHead(**coarse), PointHead(**point),
                         train_cfg=cfg["train_cfg"], test_cfg=cfg["test_cfg"])


def assert_close(got, want, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs mmseg {want.shape}"
    err = np.abs(got - want) / np.maximum(1.0, np.abs(want))
    assert err.max() <= 1e-4, f"{what}: max relative error {err.max():.2e} vs mmseg"
    return float(err.max())


def check_mmseg_fixture(name):
    """Strict load of mmseg's weights, mmseg's key names and shapes, mmseg's outputs."""
    import jittor as jt
    from utils.checkpoint import load_state_dict, remap_keys
    meta, state, arrays = read_fixture(name)
    head = build_from_fixture(name, meta)
    own = head.state_dict()
    mapped = remap_keys(state, head.checkpoint_key_map())[0] if hasattr(
        head, "checkpoint_key_map") else state
    ours = {k: tuple(v.shape) for k, v in own.items()}
    theirs = {k: tuple(shape) or (1,) for k, (_, shape) in zip(mapped, meta["keys"])}
    assert ours == theirs, (f"{name}: state dict differs from mmseg's: only ours "
                            f"{sorted(set(ours) - set(theirs))[:5]}, only mmseg's "
                            f"{sorted(set(theirs) - set(ours))[:5]}, shapes "
                            f"{[k for k in ours if k in theirs and ours[k] != theirs[k]][:5]}")
    load_state_dict(head, state, strict=True, source=f"{name}.npz")
    head.eval()
    feats = [jt.array(arrays[f"in/{i}"]) for i in range(sum(k.startswith("in/") for k in arrays))]
    with jt.no_grad():
        if not name.startswith("pointrend"):
            err = assert_close(head(feats).numpy(), arrays["out/logits"], f"{name} logits")
            return f"max relative error {err:.1e}"
        fpn = head.neck(feats)
        coarse = head.coarse_head(fpn)
        errs = [assert_close(fpn[0].numpy(), arrays["out/fpn0"], "pointrend FPN level 0"),
                assert_close(coarse.numpy(), arrays["out/coarse"], "pointrend coarse logits")]
        # the point head on mmseg's own coarse logits, so the checks are independent
        coarse = jt.array(arrays["out/coarse"])
        points = jt.array(arrays["out/points"])
        logits = head.point_logits(fpn, coarse, points)
        errs.append(assert_close(logits.numpy(), arrays["out/point_logits"], "point logits"))
        label = jt.array(arrays["out/label"].astype(np.int32))
        loss = head.point_loss(jt.array(arrays["out/point_logits"]), points, label)
        errs.append(assert_close(loss.numpy().reshape(()), arrays["out/point_loss"], "point loss"))
        errs.append(assert_close(head.subdivide(fpn, coarse).numpy(), arrays["out/subdivided"],
                                 "subdivision output"))
    return f"max relative error {max(errs):.1e}"


def tiny_config(decoder, size=(64, 64)):
    """DFormer-Tiny SynthRGBD config with ``decoder``, small point/PSA settings, no pretrained file."""
    from utils.config import load_config
    cfg = load_config("local_configs.SynthRGBD.DFormer_Tiny")
    cfg.decoder = decoder
    cfg.pretrained_model = None
    cfg.image_height, cfg.image_width = size
    cfg.point_num_points = 64
    cfg.point_subdivision_num_points = 256
    return cfg


def check_head_step(decoder, backbone="DFormer-Tiny", size=(64, 64), odd=(45, 59)):
    """One training step (forward + backward) and inference at an odd size."""
    import jittor as jt
    from utils.checkpoint import build_model
    jt.set_global_seed(0)
    cfg = tiny_config(decoder, size)
    cfg.backbone = backbone
    model = build_model(cfg, sync_bn=False)
    model.train()
    rng = np.random.default_rng(0)
    rgb = jt.array(rng.standard_normal((2, 3) + size).astype(np.float32))
    depth = jt.array(rng.standard_normal((2, 3) + size).astype(np.float32))
    label = jt.array(rng.integers(0, cfg.num_classes, (2,) + size).astype(np.int32))
    loss = model(rgb, depth, label)
    head_params = [p for p in model.decode_head.parameters() if not p.is_stop_grad()]
    grads = jt.grad(loss, head_params)
    loss_value = float(loss.numpy().reshape(-1)[0])
    assert np.isfinite(loss_value), f"{decoder}: loss {loss_value}"
    norms = [float(np.abs(g.numpy()).sum()) for g in grads]
    assert all(np.isfinite(n) for n in norms), f"{decoder}: non-finite gradient"
    assert sum(n > 0 for n in norms) >= len(norms) // 2, f"{decoder}: most head gradients are zero"
    model.eval()
    with jt.no_grad():
        out = model(jt.array(rng.standard_normal((1, 3) + odd).astype(np.float32)),
                    jt.array(rng.standard_normal((1, 3) + odd).astype(np.float32)))
    assert tuple(out.shape) == (1, cfg.num_classes) + odd, f"{decoder}: output {tuple(out.shape)}"
    assert np.isfinite(out.numpy()).all(), f"{decoder}: non-finite logits"
    return f"loss {loss_value:.4f}"


def run_checks(checks):
    passed = failed = 0
    for name, fn in checks:
        try:
            extra = fn()
            passed += 1
            detail = f" ({extra:.4f})" if isinstance(extra, float) else (f" ({extra})" if extra else "")
            print(f"PASS {name}{detail}", flush=True)
        except Exception as exc:  # noqa: BLE001  (a smoke reports every failure)
            failed += 1
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            if os.environ.get("DFORMER_DEBUG"):
                traceback.print_exc()
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


def main(argv=None):
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="*", default=["DFormer-Tiny"],
                        help="backbones for the head steps (e.g. all 7: --backbones all)")
    args = parser.parse_args(argv)
    runtime.init_device(False)
    backbones = args.backbones
    if backbones == ["all"]:
        from models.encoders import BACKBONES
        backbones = list(BACKBONES)
    checks = [(f"{name} == mmsegmentation", lambda n=name: check_mmseg_fixture(n))
              for name in MMSEG_FIXTURES]
    checks += [("psa mask op == loops", check_psa_mask),
              ("psa aggregation == loops", check_psa_aggregate),
              ("criss-cross attention == loops", check_criss_cross),
              ("point sampling / test points == loops", check_point_ops)]
    for backbone in backbones:
        for decoder in HEADS:
            checks.append((f"{decoder} head on {backbone}: train step + odd-size inference",
                           lambda d=decoder, b=backbone: check_head_step(d, b)))
    return run_checks(checks)


if __name__ == "__main__":
    sys.exit(main())
