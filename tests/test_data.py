"""Data pipeline: bit-exact preprocessing, aligned augmentation, reproducible epochs,
loud failures on bad data, and the synthetic dataset generator."""
import glob
import multiprocessing
import os
import os.path as osp
import threading
import time

import cv2
import numpy as np
import pytest

from local_configs import load_config
from utils.dataloader import synthetic as syn
from utils.dataloader import transforms as T
from utils.dataloader.rgbx_dataset import (DataError, RGBXDataset, build_train_loader,
                                           epoch_file_indices, read_split, sample_name)

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parity_root():
    return os.environ.get("DFORMER_PARITY_ROOT") or osp.join(osp.dirname(REPO), "shared", "parity")


# ----------------------------------------------------------------------------- helpers

def write_dataset(root, samples, split="train", rgb_ext=".png", label_folder="Label"):
    """Write {name: (bgr, depth, label_on_disk)} in the NYU layout and a split file."""
    for folder in ("RGB", "Depth", label_folder):
        os.makedirs(osp.join(root, folder), exist_ok=True)
    for name, (bgr, depth, label) in samples.items():
        assert cv2.imwrite(osp.join(root, "RGB", name + rgb_ext), bgr)
        assert cv2.imwrite(osp.join(root, "Depth", name + ".png"), depth)
        assert cv2.imwrite(osp.join(root, label_folder, name + ".png"), label)
    with open(osp.join(root, f"{split}.txt"), "w") as f:
        f.writelines(f"RGB/{name}.jpg\n" for name in samples)


def make_cfg(root, base="local_configs.NYUDepthv2.DFormer_Tiny", **overrides):
    cfg = load_config(base)
    cfg.update(dataset_path=root, rgb_root_folder=osp.join(root, "RGB"), rgb_format=".png",
               x_root_folder=osp.join(root, "Depth"), gt_root_folder=osp.join(root, "Label"),
               train_source=osp.join(root, "train.txt"), eval_source=osp.join(root, "test.txt"))
    cfg.update(overrides)
    return cfg


def block_sample(rng, h=60, w=80, block=10, k=5):
    """Piecewise-constant images whose colour and depth encode the label of each block."""
    classes = rng.integers(0, k, (h // block, w // block))
    cls = np.kron(classes, np.ones((block, block), int))
    bgr = COLORS[cls].astype(np.uint8)
    depth = DEPTHS[cls].astype(np.uint8)
    return bgr, depth, (cls + 1).astype(np.uint8)


COLORS = np.array([[10, 200, 30], [200, 20, 90], [90, 90, 250], [250, 250, 5], [40, 120, 160]])
DEPTHS = np.array([20, 70, 130, 180, 240])


def tiny_dataset(tmp_path, n=5, seed=0, **cfg_overrides):
    rng = np.random.default_rng(seed)
    root = str(tmp_path / "data")
    samples = {f"img{i}": block_sample(rng) for i in range(n)}
    write_dataset(root, samples, "train")
    write_dataset(root, samples, "test")
    opts = dict(num_classes=5, class_names=list("abcde"), image_height=48, image_width=64,
                batch_size=2, niters_per_epoch=4, train_scale_array=[0.5, 1, 1.5], seed=7)
    opts.update(cfg_overrides)
    return make_cfg(root, **opts)


# ----------------------------------------------------------------------------- bit exactness

def _parity_cases():
    root = parity_root()
    return sorted(glob.glob(osp.join(root, "NYUDepthv2", "*", "case*")))


@pytest.mark.skipif(not _parity_cases(), reason=f"parity fixtures not found under {parity_root()} "
                    "(set DFORMER_PARITY_ROOT)")
@pytest.mark.parametrize("case", _parity_cases() or [None])
def test_eval_preprocessing_bit_exact(case, tmp_path):
    bgr = np.load(osp.join(case, "rgb_file_uint8.npy"))
    depth = np.load(osp.join(case, "depth_file_uint8.npy"))
    want_rgb, want_depth = np.load(osp.join(case, "rgb.npy"))[0], np.load(osp.join(case, "depth.npy"))[0]
    # transform alone
    rgb, d, _ = T.EvalTransform(MEAN, STD)(bgr, np.dstack([depth] * 3), depth)
    assert rgb.dtype == np.float32 and np.array_equal(rgb, want_rgb)
    assert np.array_equal(d, want_depth)
    # through files and the dataset (PNG is lossless, so the decoded arrays are the same)
    root = str(tmp_path / "data")
    write_dataset(root, {"case": (bgr, depth, np.ones_like(depth))}, "test")
    item = RGBXDataset(make_cfg(root), "val").get_sample(0)
    assert np.array_equal(item["rgb"], want_rgb) and np.array_equal(item["depth"], want_depth)
    assert item["label"].dtype == np.int32 and (item["label"] == 0).all()
    assert item["fn"] == osp.join(root, "RGB", "case.png")


def test_normalisation_is_float64_then_float32():
    img = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, 2)
    out = T.to_chw_float32(T.normalize(img, MEAN, STD))
    ref = ((img.astype(np.float64) / 255.0 - np.array(MEAN)) / np.array(STD)).astype(np.float32)
    assert np.array_equal(out, ref.transpose(2, 0, 1))


def test_color_order_rgb_swaps_channels(tmp_path):
    cfg = tiny_dataset(tmp_path)
    bgr_item = RGBXDataset(cfg, "val").get_sample(0)
    cfg.color_order = "RGB"
    rgb_item = RGBXDataset(cfg, "val").get_sample(0)
    raw = cv2.imread(osp.join(cfg.rgb_root_folder, "img0.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(rgb_item["rgb"], T.to_chw_float32(T.normalize(raw[..., ::-1], MEAN, STD)))
    assert not np.array_equal(rgb_item["rgb"], bgr_item["rgb"])


def test_sun_eval_padding_bottom_right_before_normalisation():
    bgr = np.full((20, 30, 3), 100, np.uint8)
    label = np.ones((20, 30), np.uint8)
    rgb, depth, lab = T.EvalTransform(MEAN, STD, pad_to=T.SUN_PAD_SIZE)(bgr, bgr.copy(), label)
    assert rgb.shape == (3, 531, 730) and lab.shape == (531, 730)
    np.testing.assert_array_equal(rgb[:, -1, -1], ((0 - np.array(MEAN)) / np.array(STD)).astype(np.float32))
    assert depth[0, 25, 40] == np.float32((0 - 0.48) / 0.28)
    assert (lab[20:] == 255).all() and (lab[:, 30:] == 255).all() and (lab[:20, :30] == 1).all()
    with pytest.raises(ValueError, match="larger"):
        T.pad_bottom_right(np.zeros((600, 10)), T.SUN_PAD_SIZE, 0)


# ----------------------------------------------------------------------------- augmentation

def test_crop_origin_inclusive_bound_and_centred_padding():
    rng = np.random.default_rng(0)
    origins = {T.random_crop_origin(rng, (5, 3), (3, 3)) for _ in range(200)}
    assert origins == {(0, 0), (1, 0), (2, 0), (3, 0)}  # 3 = size - crop + 1: one past the end
    img = np.arange(25, dtype=np.float64).reshape(5, 5)
    out = T.crop_and_pad(img, (3, 0), (3, 5), -1.0)  # only 2 rows left: padded at the bottom
    np.testing.assert_array_equal(out[:2], img[3:])
    np.testing.assert_array_equal(out[2], -1)
    small = T.crop_and_pad(np.ones((3, 2)), (0, 0), (6, 5), 0)
    assert small.shape == (6, 5)
    assert small[1:4, 1:3].all() and small.sum() == 6  # top 1 / bottom 2, left 1 / right 2


def test_rescale_size_truncates():
    img = np.zeros((101, 203, 3), np.uint8)
    rgb, depth, label = T.rescale(img, img, img[..., 0], 0.75)
    assert rgb.shape == (75, 152, 3) and depth.shape == rgb.shape and label.shape == (75, 152)


def _decode(chw, table, normalise):
    """Index of the table entry every pixel equals exactly, -1 where none does."""
    out = np.full(chw.shape[1:], -1)
    for k, value in enumerate(table):
        want = T.to_chw_float32(normalise(np.asarray(value, np.uint8).reshape(1, 1, -1)))[:, 0, 0]
        out[(chw == want[:, None, None]).all(0)] = k
    return out


def test_train_augmentation_keeps_rgb_depth_label_aligned():
    transform = T.TrainTransform((48, 64), [0.5, 0.75, 1, 1.25, 1.5, 1.75], MEAN, STD)
    seen_pad = seen_flip = 0
    for seed in range(40):
        bgr, depth, label = block_sample(np.random.default_rng(seed))
        rgb_t, depth_t, label_t = transform(bgr, np.dstack([depth] * 3), label - 1,
                                            np.random.default_rng(1000 + seed))
        assert rgb_t.shape == depth_t.shape == (3, 48, 64) and label_t.shape == (48, 64)
        colour = _decode(rgb_t, COLORS, lambda x: T.normalize(x, MEAN, STD))
        dep = _decode(depth_t, [[v] * 3 for v in DEPTHS], T.normalize_depth)
        valid = label_t != 255
        # wherever a pixel is an unblended block colour, it agrees with the label and the depth
        exact = valid & (colour >= 0)
        assert exact.mean() > 0.5 * valid.mean()
        assert (colour[exact] == label_t[exact]).all()
        assert (dep[exact] == label_t[exact]).all()
        # padding: label 255 exactly where rgb and depth are 0 in normalised space
        pad = ~valid
        assert (rgb_t[:, pad] == 0).all() and (depth_t[:, pad] == 0).all()
        seen_pad += pad.any()
        seen_flip += not np.array_equal(label_t, T.crop_and_pad(label - 1, (0, 0), (48, 64), 255))
    assert seen_pad and seen_flip


# ----------------------------------------------------------------------------- epochs and resume

def test_training_length_rule_and_tail():
    idx = epoch_file_indices(5, 12, seed=3, epoch=1)
    np.testing.assert_array_equal(idx[:10], np.tile(np.arange(5), 2))
    assert len(set(idx[10:].tolist())) == 2
    np.testing.assert_array_equal(idx, epoch_file_indices(5, 12, seed=3, epoch=1))
    tails = {tuple(epoch_file_indices(5, 12, seed=3, epoch=e)[10:]) for e in range(10)}
    assert len(tails) > 1


def test_samples_depend_only_on_seed_epoch_position(tmp_path):
    cfg = tiny_dataset(tmp_path)
    a, b = RGBXDataset(cfg, "train"), RGBXDataset(cfg, "train")
    assert len(a.names) == 5 and a.num_samples == 8  # batch_size * niters_per_epoch
    for pos in (0, 3, 7):
        x, y = a.get_sample(pos, epoch=2), b.get_sample(pos, epoch=2)
        assert all(np.array_equal(x[k], y[k]) for k in ("rgb", "depth", "label"))
    differs = [not np.array_equal(a.get_sample(p, 2)["rgb"], a.get_sample(p, 3)["rgb"])
               for p in range(5)]
    assert any(differs)


def _batches(loader):
    return [{k: (v if k == "fn" else v.numpy()) for k, v in batch.items()} for batch in loader]


def test_resumed_epoch_reproduces_batches(tmp_path):
    cfg = tiny_dataset(tmp_path)
    loader = build_train_loader(cfg, num_workers=0)
    loader.set_epoch(3)
    full = _batches(loader)
    assert len(full) == 4 and full[0]["rgb"].shape == (2, 3, 48, 64)
    assert full[0]["label"].dtype == np.int32 and len(full[0]["fn"]) == 2
    resumed = build_train_loader(cfg, num_workers=0)
    resumed.set_epoch(3, start_iter=2)
    rest = _batches(resumed)
    assert len(rest) == 2
    for want, got in zip(full[2:], rest):
        assert want["fn"] == got["fn"]
        assert all(np.array_equal(want[k], got[k]) for k in ("rgb", "depth", "label"))
    loader.set_epoch(4)
    other = _batches(loader)
    assert [b["fn"] for b in other] != [b["fn"] for b in full] or \
        not np.array_equal(other[0]["rgb"], full[0]["rgb"])


def test_worker_threads_deliver_the_same_batches_in_order(tmp_path):
    cfg = tiny_dataset(tmp_path, niters_per_epoch=5)
    serial = build_train_loader(cfg, num_workers=0)
    pooled = build_train_loader(cfg, num_workers=2)
    try:
        want = [_batches(serial) for _ in range(2)]  # epochs 0 and 1 (auto-advance)
        got = [_batches(pooled) for _ in range(2)]
        for w_epoch, g_epoch in zip(want, got):
            assert [b["fn"] for b in w_epoch] == [b["fn"] for b in g_epoch]
            assert all(np.array_equal(w["rgb"], g["rgb"]) for w, g in zip(w_epoch, g_epoch))
        pooled.set_epoch(1, start_iter=3)
        rest = _batches(pooled)
        assert [b["fn"] for b in rest] == [b["fn"] for b in want[1][3:]]
        os.remove(osp.join(cfg.gt_root_folder, "img2.png"))
        with open(osp.join(cfg.gt_root_folder, "img2.png"), "wb") as f:
            f.write(b"broken")
        with pytest.raises(DataError, match="Label/img2.png"):
            _batches(pooled)
    finally:
        pooled.terminate()


# ----------------------------------------------------------------------------- bad data

def test_split_file_problems_fail_at_construction(tmp_path):
    cfg = tiny_dataset(tmp_path)
    split = cfg.train_source
    os.remove(osp.join(cfg.x_root_folder, "img3.png"))
    with pytest.raises(DataError, match=r"Depth/img3\.png"):
        RGBXDataset(cfg, "train")
    with open(split, "w") as f:
        f.write("\n\n")
    with pytest.raises(DataError, match="lists no samples.*train.txt"):
        RGBXDataset(cfg, "train")
    with open(split, "w") as f:
        f.write("RGB/img0.jpg\nimg1.jpg\n")
    with pytest.raises(DataError, match=r"train\.txt:2: malformed"):
        read_split(split)
    with pytest.raises(DataError, match="split file not found.*nope.txt"):
        read_split(str(tmp_path / "nope.txt"))
    assert sample_name("RGB/abc.jpg 17") == "abc" and sample_name("RGB/x.png") == "x"


def _corrupt(cfg, tmp_path, name, folder, img=None, raw=None):
    path = osp.join(cfg.dataset_path, folder, name + ".png")
    if raw is not None:
        with open(path, "wb") as f:
            f.write(raw)
    else:
        assert cv2.imwrite(path, img)
    return path


@pytest.mark.parametrize("what, match", [
    ("corrupt_rgb", "unreadable or corrupt image: .*RGB/img1.png"),
    ("grey_rgb", "3-channel colour image: .*RGB/img1.png"),
    ("depth_size", "size mismatch: .*Depth/img1.png is 30x80"),
    ("label_size", "size mismatch: .*Label/img1.png"),
    ("label_range", r"label values \[5\] out of range.*Label/img1.png"),
    ("label_255", r"label values \[254\] out of range.*Label/img1.png"),
])
def test_bad_images_fail_at_load_naming_the_file(tmp_path, what, match):
    cfg = tiny_dataset(tmp_path)
    bgr, depth, label = block_sample(np.random.default_rng(0))
    if what == "corrupt_rgb":
        _corrupt(cfg, tmp_path, "img1", "RGB", raw=b"\x89PNG not really")
    elif what == "grey_rgb":
        _corrupt(cfg, tmp_path, "img1", "RGB", img=depth)
    elif what == "depth_size":
        _corrupt(cfg, tmp_path, "img1", "Depth", img=depth[:30])
    elif what == "label_size":
        _corrupt(cfg, tmp_path, "img1", "Label", img=label[:, :40])
    elif what == "label_range":
        label[5, 5] = 6  # 6 - 1 = 5 = num_classes
        _corrupt(cfg, tmp_path, "img1", "Label", img=label)
    else:
        label[5, 5] = 255  # wraps to 254
        _corrupt(cfg, tmp_path, "img1", "Label", img=label)
    ds = RGBXDataset(cfg, "val")  # construction only checks existence
    ds.get_sample(0)
    with pytest.raises(DataError, match=match):
        ds.get_sample(1)


# ----------------------------------------------------------------------------- synthetic data

def test_synthetic_generator_is_deterministic(tmp_path):
    a, b = str(tmp_path / "a" / "Synth"), str(tmp_path / "b" / "Synth")
    for out in (a, b):
        syn.generate_dataset(out, train=3, test=2, seed=5, height=48, width=64, verbose=False)
    files = sorted(os.path.relpath(p, a) for p in glob.glob(osp.join(a, "**", "*"), recursive=True)
                   if osp.isfile(p))
    assert len(files) == 3 * 5 + 3  # images, two split files and meta.json
    for rel in files:
        with open(osp.join(a, rel), "rb") as fa, open(osp.join(b, rel), "rb") as fb:
            assert fa.read() == fb.read(), rel
    x, y = syn.generate_sample(5, "train", 0, 48, 64), syn.generate_sample(6, "train", 0, 48, 64)
    assert not np.array_equal(x[0], y[0])
    assert not [p for p in os.listdir(tmp_path / "a") if p.startswith(".")]  # no temp left


def test_depth_only_classes_identical_in_rgb():
    flipped_pairs = 0
    for index in range(6):
        lay = syn.sample_layout(np.random.default_rng(index), 120, 160)
        bits = syn.sample_raised(np.random.default_rng(100 + index), lay)
        flip = {k: [not b for b in v] for k, v in bits.items()}
        bgr_a, depth_a, label_a = syn.render(lay, bits)
        bgr_b, depth_b, label_b = syn.render(lay, flip)
        assert np.array_equal(bgr_a, bgr_b)  # colour does not depend on the class bits
        changed = label_a != label_b
        swap = {syn.POSTER: syn.BOX, syn.BOX: syn.POSTER, syn.RUG: syn.PLATFORM,
                syn.PLATFORM: syn.RUG}
        assert all(swap[a] == b for a, b in zip(label_a[changed], label_b[changed]))
        if changed.any():
            flipped_pairs += 1
            assert not np.array_equal(depth_a, depth_b)
    assert flipped_pairs >= 4


def test_synthetic_labels_and_layout():
    bgr, depth, label = syn.generate_sample(0, "train", 0)
    assert bgr.shape == (240, 320, 3) and depth.shape == label.shape == (240, 320)
    assert label.max() <= len(syn.CLASS_NAMES) and {syn.WALL, syn.FLOOR} <= set(np.unique(label))
    assert depth.min() == 0 and depth.max() == 255
    wall, floor = depth[label == syn.WALL].mean(), depth[label == syn.FLOOR].mean()
    assert floor < wall  # near = dark


def test_ensure_synthetic_dataset_and_loading(tmp_path):
    root = str(tmp_path / "datasets" / "SynthRGBD")
    cfg = load_config("local_configs.SynthRGBD.DFormer_Tiny")
    cfg.update(num_train_imgs=4, num_eval_imgs=2, synthetic_size=(48, 64), image_height=48, image_width=64,
               batch_size=2, niters_per_epoch=2, dataset_path=root,
               rgb_root_folder=osp.join(root, "RGB"), x_root_folder=osp.join(root, "Depth"),
               gt_root_folder=osp.join(root, "Label"), train_source=osp.join(root, "train.txt"),
               eval_source=osp.join(root, "test.txt"))
    os.makedirs(tmp_path / "datasets" / ".SynthRGBD.tmp-999999999-x")  # from a dead process
    ds = RGBXDataset(cfg, "train")  # generates on first use
    assert os.listdir(tmp_path / "datasets") == ["SynthRGBD"]
    item = ds.get_sample(1)
    assert item["rgb"].shape == (3, 48, 64)
    assert set(np.unique(item["label"])) <= set(range(8)) | {255}
    assert len(RGBXDataset(cfg, "val").names) == 2
    cfg.synthetic_seed = 1
    with pytest.raises(syn.SyntheticDatasetError, match="different settings"):
        syn.ensure_synthetic_dataset(cfg)


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn, "_write_range", boom)
    with pytest.raises(KeyboardInterrupt):
        syn.generate_dataset(str(tmp_path / "Synth"), train=2, test=1, height=32, width=32,
                             verbose=False)
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- parallel loading

def _loader_threads():
    return [t for t in threading.enumerate() if "-loader-" in t.name]


def _wait_no_loader_threads(limit=5.0):
    deadline = time.monotonic() + limit
    while _loader_threads():
        assert time.monotonic() < deadline, f"loader threads still alive: {_loader_threads()}"
        time.sleep(0.01)


def test_parallel_loader_stress_errors_and_shutdown_are_bounded(tmp_path):
    """50 cycles: start, read a few batches, abandon a pass; start again and run into an
    unreadable file in a worker; every cycle ends in seconds with no thread or process left."""
    cfg = tiny_dataset(tmp_path, n=8, niters_per_epoch=6)
    with open(osp.join(cfg.gt_root_folder, "img6.png"), "wb") as f:
        f.write(b"broken")
    loader = build_train_loader(cfg, num_workers=3, shuffle=False)  # img6 is in batch 3
    start = time.monotonic()
    children = set(multiprocessing.active_children())  # e.g. Jittor's compiler pool
    for cycle in range(50):
        t0 = time.monotonic()
        loader.set_epoch(cycle)
        batches = iter(loader)
        assert [next(batches)["fn"] for _ in range(2)][1][0].endswith("img2.png")
        del batches  # dropping a pass mid-epoch stops its workers
        _wait_no_loader_threads()
        loader.set_epoch(cycle)
        seen = []
        with pytest.raises(DataError, match=r"unreadable or corrupt image: .*Label/img6\.png"):
            for batch in loader:
                seen.append(batch["fn"])
        assert len(seen) == 3  # the batches before the bad one arrive, in order
        _wait_no_loader_threads()
        assert time.monotonic() - t0 < 10, f"cycle {cycle} took {time.monotonic() - t0:.1f}s"
    assert time.monotonic() - start < 50
    assert set(multiprocessing.active_children()) <= children  # nothing was forked


def test_worker_failure_is_raised_in_order_not_hung(tmp_path, monkeypatch):
    """Threads replace processes, so a killed worker process cannot happen (an OOM kill ends
    the whole run); the equivalents are a worker raising and a read that never returns."""
    cfg = tiny_dataset(tmp_path, n=6, niters_per_epoch=3)
    loader = build_train_loader(cfg, num_workers=2, shuffle=False)
    original = loader.files.load

    def flaky(name):
        if name == "img3":
            raise MemoryError("simulated: out of memory while decoding")
        return original(name)

    monkeypatch.setattr(loader.files, "load", flaky)
    got = []
    with pytest.raises(MemoryError, match="simulated"):
        for batch in loader:
            got.append(batch["fn"])
    assert len(got) == 1
    _wait_no_loader_threads()


def test_stuck_read_times_out_with_the_files_named(tmp_path, monkeypatch):
    from utils.dataloader.workers import LoaderTimeout
    cfg = tiny_dataset(tmp_path, n=6, niters_per_epoch=3, loader_timeout=1.0)
    loader = build_train_loader(cfg, num_workers=2, shuffle=False)
    release = threading.Event()
    original = loader.files.load

    def stuck(name):
        if name == "img2":
            release.wait(60)  # a read on a dead network mount
        return original(name)

    monkeypatch.setattr(loader.files, "load", stuck)
    t0 = time.monotonic()
    batches = iter(loader)
    next(batches)
    with pytest.raises(LoaderTimeout, match=r"batch 1 within 1s \(.*RGB/img2\.png"):
        next(batches)
    assert time.monotonic() - t0 < 6  # timeout + bounded shutdown, whatever the stuck thread does
    release.set()
    _wait_no_loader_threads()


def test_prefetcher_orders_and_bounds_lookahead():
    from utils.dataloader.workers import OrderedPrefetcher
    started = []

    def load(k):
        started.append(k)
        time.sleep(0.002 * (k % 3))  # finish out of order
        return k * 10

    pre = OrderedPrefetcher(load, range(40), workers=4, ahead=3)
    out = []
    for value in pre:
        out.append(value)
        assert max(started) <= len(out) + 3  # never more than `ahead` beyond the consumer
    assert out == [k * 10 for k in range(40)] and pre.alive_workers() == 0


# ----------------------------------------------------------------------------- depth formats

def _matplotlib_grey(depth, path):
    """What the official depth PNGs are: matplotlib's imsave with the grey map, read back."""
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    plt.imsave(path, depth.astype(np.float64), cmap="gray")
    return cv2.imread(path, cv2.IMREAD_GRAYSCALE)


def test_16bit_and_float_depth_normalised_like_the_official_pngs(tmp_path, capsys):
    rng = np.random.default_rng(0)
    mm = rng.integers(400, 9000, (60, 80)).astype(np.uint16)
    mm[10:20, 10:20] = 650
    want = _matplotlib_grey(mm, str(tmp_path / "official.png"))
    T._NOTED.clear()
    got = T.depth_to_uint8(mm, "a.png")
    np.testing.assert_array_equal(got, want)
    assert got.min() == 0 and got.max() == 255 and got[15, 15] < got.mean()  # near = dark
    metres = mm.astype(np.float32) / 1000
    np.testing.assert_array_equal(T.depth_to_uint8(metres, "b.npy"), want)
    err = capsys.readouterr().err
    assert err.count("16-bit depth (a.png") == 1 and err.count("float depth (b.npy") == 1
    T.depth_to_uint8(mm, "c.png")  # said once per kind
    assert capsys.readouterr().err == ""
    # files: 16-bit PNG, float .npy and float TIFF decode the same way
    assert cv2.imwrite(str(tmp_path / "d16.png"), mm)
    np.save(tmp_path / "d.npy", metres)
    assert cv2.imwrite(str(tmp_path / "d.tiff"), metres)
    for name in ("d16.png", "d.npy", "d.tiff"):
        np.testing.assert_array_equal(T.read_depth_file(str(tmp_path / name)), want, err_msg=name)
    flat = T.depth_to_uint8(np.full((4, 4), 1234, np.uint16))
    nan = T.depth_to_uint8(np.array([[np.nan, 1.0], [2.0, np.inf]]))
    assert not flat.any() and nan.tolist() == [[0, 0], [255, 0]]


def test_8bit_depth_path_is_unchanged(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (30, 40)).astype(np.uint8)
    colour = rng.integers(0, 256, (30, 40, 3)).astype(np.uint8)
    rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    for name, img in (("grey.png", grey), ("colour.png", colour), ("rgba.png", rgba),
                      ("grey.jpg", grey)):
        path = str(tmp_path / name)
        assert cv2.imwrite(path, img)
        np.testing.assert_array_equal(T.read_depth_file(path),
                                      cv2.imread(path, cv2.IMREAD_GRAYSCALE), err_msg=name)
    assert T.depth_to_uint8(grey) is grey


def test_dataset_reads_16bit_depth(tmp_path):
    cfg = tiny_dataset(tmp_path, n=2)
    mm = np.random.default_rng(2).integers(500, 6000, (60, 80)).astype(np.uint16)
    assert cv2.imwrite(osp.join(cfg.x_root_folder, "img1.png"), mm)
    item = RGBXDataset(cfg, "val").get_sample(1)
    u8 = T.depth_to_uint8(mm)
    np.testing.assert_array_equal(item["depth"], T.to_chw_float32(T.normalize_depth(
        np.dstack([u8, u8, u8]))))


@pytest.mark.parametrize("mean, std", [(MEAN, STD), ((0.48,) * 3, (0.28,) * 3)])
def test_table_normalisation_equals_the_arithmetic_bit_for_bit(mean, std):
    img = np.random.default_rng(0).integers(0, 256, (37, 23, 3), dtype=np.uint8)
    img[0, :3] = [[0, 0, 0], [255, 255, 255], [1, 128, 254]]
    want = T.to_chw_float32(T.normalize(img, mean, std))
    got = T.ChannelTable(mean, std)(img)
    assert got.dtype == np.float32 and got.shape == (3, 37, 23)
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    # other dtypes take the arithmetic
    as_float = img.astype(np.float32)
    assert np.array_equal(T.ChannelTable(mean, std)(as_float), T.to_chw_float32(T.normalize(as_float, mean, std)))


@pytest.mark.parametrize("shape, origin", [((50, 60), (3, 7)),     # larger: plain cut
                                           ((20, 60), (0, 30)),    # shorter: centred padding
                                           ((50, 33), (41, 0))])   # cut one short at the end
def test_crop_normalize_pad_equals_normalize_then_crop_and_pad(shape, origin):
    img = np.random.default_rng(1).integers(0, 256, shape + (3,), dtype=np.uint8)
    crop = (32, 40)
    want = T.to_chw_float32(T.crop_and_pad(T.normalize(img, MEAN, STD), origin, crop, 0.0))
    got = T.crop_normalize_pad(img, origin, crop, T.ChannelTable(MEAN, STD))
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
