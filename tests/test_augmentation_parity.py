"""Training augmentation against the official ``TrainPre`` (fixture: tests/fixtures/augmentation,
made by ``gen_augmentation.py`` beside it from the official code at commit 814799bb).

* **Bit for bit**: for every recorded sample, the official ``random`` draws (mirror, scale,
  crop origin) are played back into our dataset (``RGBXDataset.get_sample``: file decoding,
  colour order, label shift, ``TrainTransform``), which must return the official arrays exactly
  (sha256 of the float32 RGB and depth, the label). Our draw ranges must be the official ones,
  the crop origin's ``randint(0, h - crop + 1)`` included (its last value lies one past the
  last full crop: reproduced, not corrected). Cases: NYU DFormer-Tiny (BGR), SUN DFormerv2-S
  (RGB) and SUN DFormer-Tiny (BGR) configs, and the SynthRGBD quick-start values; crops larger
  than the scaled image (centred padding, label 255) and scale 1 without a crop draw occur.
* **Distribution**: 10,000 samples drawn by our per-sample generators
  (``sample_rng(seed, epoch, position)``, as in training) against 10,000 official draws: the
  same support, and chi-square homogeneity tests of the mirror, scale and per-scale crop
  origin frequencies, each required at p > ``P_MIN``. Both sides are seeded, so the test is
  deterministic; with correct code a threshold of 1e-3 fails for about 1% of seed choices
  (12 tests), and a wrong range is caught by the support check whatever the seed.

Data order is not compared (it cannot be: the official order comes from torch's global RNG).
The official loader shuffles with ``DataLoader(shuffle=True)`` (a fresh ``randperm`` of the
epoch's positions per epoch, from torch's RNG), redraws the tail of the lengthened file list
(``torch.randperm`` in ``__getitem__``) at every access, and draws the augmentation from
Python's ``random`` in each loader worker (seeded by PyTorch per worker and epoch). Ours:
a permutation of the positions from ``(seed, epoch)``, the tail drawn once per epoch, and each
sample's augmentation from its own generator seeded by ``(seed, epoch, position)`` (see
utils/dataloader/rgbx_dataset.py): the same distributions, reproducible whatever the workers.
"""
import hashlib
import importlib.util
import json
import os

import numpy as np
import pytest
from scipy.stats import chi2_contingency

from local_configs import load_config
from utils.dataloader import rgbx_dataset
from utils.dataloader.rgbx_dataset import RGBXDataset, sample_rng
from utils.dataloader.transforms import TrainTransform

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "augmentation")
with open(os.path.join(FIXTURE, "cases.json")) as _f:
    RECORD = json.load(_f)
P_MIN = 1e-3
_spec = importlib.util.spec_from_file_location("gen_augmentation",
                                               os.path.join(FIXTURE, "gen_augmentation.py"))
GEN = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(GEN)   # for its moments(): numpy and OpenCV only at import


class Playback:
    """Stands in for the sample's generator: returns the official draws, checking that ours
    asks for the same thing over the same range."""

    def __init__(self, calls):
        self.calls = [list(c) for c in calls]

    def _next(self, kind):
        assert self.calls, f"ours draws more than the official code (a {kind})"
        call = self.calls.pop(0)
        assert call[0] in kind, f"ours draws a {kind} where the official code calls {call}"
        return call

    def random(self):
        return self._next("random")[1]

    def integers(self, low, high=None):
        low, high = (0, low) if high is None else (low, high)
        call = self._next(("choice", "randint"))
        if call[0] == "choice":     # random.choice(seq): an index in 0 .. len(seq) - 1
            n, index = call[1:]
            assert (low, high) == (0, n), f"scale index over [{low}, {high}), official {n} scales"
            return index
        a, b, value = call[1:]      # random.randint(a, b): a .. b inclusive
        assert (low, high) == (a, b + 1), f"crop origin over [{low}, {high}), official [{a}, {b}]"
        return value

    def finish(self):
        assert not self.calls, f"official draws left unused: {self.calls}"


class Recorder:
    """A generator that logs what is drawn from it, in the form of the official log."""

    def __init__(self, rng):
        self.rng, self.calls = rng, []

    def random(self):
        v = self.rng.random()
        self.calls.append(["random", v])
        return v

    def integers(self, low, high=None):
        v = int(self.rng.integers(low, high))
        self.calls.append(["integers", v])
        return v


def our_dataset(case, tmp_path):
    """Our dataset of the case's config on the fixture's image, at the fixture's crop."""
    cfg = load_config(case["our_config"])
    # our config holds the official values (SynthRGBD: the recipe the fixture ran officially)
    assert [cfg.image_height, cfg.image_width] == case["config_crop"]
    assert list(cfg.train_scale_array) == case["scales"]
    assert list(cfg.norm_mean) == case["norm_mean"] and list(cfg.norm_std) == case["norm_std"]
    assert cfg.color_order == case["rgb_mode"]
    assert bool(cfg.x_is_single_channel) == case["x_is_single_channel"]
    assert bool(cfg.gt_transform) == case["gt_transform"]
    split = tmp_path / "train.txt"
    split.write_text(f"RGB/{case['image']}.jpg\n")
    data = os.path.join(FIXTURE, "data")
    cfg.update(synthetic=False, rgb_root_folder=os.path.join(data, "RGB"), rgb_format=".png",
               x_root_folder=os.path.join(data, "Depth"), gt_root_folder=os.path.join(data, "Label"),
               gt_format=".png", x_format=".png", train_source=str(split),
               image_height=case["crop"][0], image_width=case["crop"][1])
    return RGBXDataset(cfg, "train")


def _describe(a):
    return _describe_ref(GEN.moments(np.asarray(a)))


def _describe_ref(m):
    return ", ".join(f"{k} {v!r}" for k, v in m.items())


@pytest.mark.parametrize("name", sorted(RECORD["cases"]))
def test_training_samples_bit_identical_to_official(name, tmp_path, monkeypatch):
    case = RECORD["cases"][name]
    ds = our_dataset(case, tmp_path)
    bad = []
    for i, draw in enumerate(case["draws"]):
        rng = Playback(draw["calls"])
        monkeypatch.setattr(rgbx_dataset, "sample_rng", lambda *key: rng)
        item = ds.get_sample(0)
        rng.finish()
        label = item["label"]
        assert label.min() >= 0 and label.max() <= 255
        for key, arr in (("rgb", item["rgb"]), ("depth", item["depth"]),
                         ("label", label.astype(np.uint8))):
            want = draw[key]
            assert list(arr.shape) == want["shape"] and str(arr.dtype) == want["dtype"], key
            if hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest() != want["sha256"]:
                ref = {k: want[k] for k in ("sum", "row_moment", "col_moment")}
                bad.append(f"sample {i} {key}: ours {_describe(arr)}; official {_describe_ref(ref)}")
    assert not bad, f"{name}: {len(bad)} arrays differ from the official: " + "; ".join(bad[:6])


def _counts(table, support):
    return [table.get(str(k), 0) for k in support]


def test_draw_frequencies_match_official():
    dist = RECORD["distribution"]
    (h, w), crop, scales = dist["image"], dist["crop"], dist["scales"]
    transform = TrainTransform(crop, scales, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    rgb, label = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
    mirror, scale = 0, [0] * len(scales)
    rows, cols = [{} for _ in scales], [{} for _ in scales]
    for position in range(dist["draws"]):
        rec = Recorder(sample_rng(12345, 0, position))
        transform(rgb, rgb, label, rec)
        calls = rec.calls
        mirror += calls.pop(0)[1] >= 0.5
        s = calls.pop(0)[1]
        scale[s] += 1
        for size, c, table in ((int(h * scales[s]), crop[0], rows[s]),
                               (int(w * scales[s]), crop[1], cols[s])):
            origin = calls.pop(0)[1] if size > c else 0
            table[str(origin)] = table.get(str(origin), 0) + 1
        assert not calls
    tests = [("mirror", [mirror, dist["draws"] - mirror], [dist["mirror"], dist["draws"] - dist["mirror"]]),
             ("scale", scale, dist["scale"])]
    for s, value in enumerate(scales):
        for axis, ours, ref, size, c in (("row", rows[s], dist["rows"][s], int(h * value), crop[0]),
                                         ("column", cols[s], dist["cols"][s], int(w * value), crop[1])):
            # the official support, 0 .. size - crop + 1 inclusive, is ours
            support = sorted(int(k) for k in ref)
            assert support == list(range(size - c + 2 if size > c else 1)), (value, axis, support)
            assert sorted(int(k) for k in ours) == support, (value, axis)
            if len(support) > 1:
                tests.append((f"{axis} origin at scale {value}", _counts(ours, support),
                              _counts(ref, support)))
    report = []
    for what, ours, ref in tests:
        p = chi2_contingency(np.array([ours, ref])).pvalue
        report.append((what, p))
        assert p > P_MIN, f"{what}: ours {ours} vs official {ref}: p = {p:.2e}"
    print("chi-square p-values: " + ", ".join(f"{w} {p:.3f}" for w, p in report))
