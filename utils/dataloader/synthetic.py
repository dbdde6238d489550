"""SynthRGBD: a small, seeded, synthetic indoor RGB-D segmentation dataset.

Written in exactly the NYUDepthv2 layout (``RGB/*.png``, ``Depth/*.png``,
``Label/*.png``, ``train.txt``, ``test.txt``) so the ordinary dataset code reads it.

Each image is a room seen from a standing camera: a back wall (slightly tilted)
and a floor plane in perspective, with

* poster / box: textured rectangles on the wall. A box sticks out of the wall,
  a poster lies flat on it. Both draw their texture from the same distribution,
  at the same places, without shading: **only depth tells them apart**;
* rug / platform: textured rectangles on the floor. A platform's top is raised
  above the floor, a rug is flat: again identical in colour, different in depth;
* cabinet (standing on the floor against the wall) and ball (shaded sphere on
  the floor): recognisable from colour alone;
* a few "clutter" blobs labelled 0 (unlabeled, ignored in training).

Generation is split into a *layout* (everything visible: geometry, textures,
noise) and the per-object *raised* bits (box vs poster, platform vs rug) drawn
from a separate stream; the colour image is rendered from the layout alone, so
flipping the bits changes labels and depth but not one RGB byte.

Depth is stored like NYU's: per-image min-max normalised to 0..255, near = dark.
Labels: 0 = unlabeled, 1..8 = the classes in ``CLASS_NAMES`` (the dataset code
subtracts 1). Every image is a pure function of ``(seed, split, index)``.

CLI: ``python -m utils.dataloader.synthetic [--out datasets/SynthRGBD]
[--train 400 --test 100 --seed 0 --height 240 --width 320 --workers 1 --force]``.
"""
import argparse
import json
import os
import os.path as osp
import shutil
import tempfile
import time

import cv2
import numpy as np

CLASS_NAMES = ("wall", "floor", "poster", "box", "rug", "platform", "cabinet", "ball")
WALL, FLOOR, POSTER, BOX, RUG, PLATFORM, CABINET, BALL = range(1, 9)  # ids on disk
GENERATOR_VERSION = 1
_SPLITS = {"train": 0, "test": 1}


class SyntheticDatasetError(RuntimeError):
    """The synthetic dataset folder exists but does not match the request."""


# ----------------------------------------------------------------------------- layout

def _rect_overlaps(rect, others, gap=3):
    y0, y1, x0, x1 = rect
    return any(y0 < b1 + gap and b0 < y1 + gap and x0 < c1 + gap and c0 < x1 + gap
               for b0, b1, c0, c1 in others)


def _pattern(rng, h, w):
    """Texture shared by the depth-only pairs: stripes, checks or dots in two colours."""
    c1, c2 = rng.uniform(25, 230, size=(2, 3))
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    period = rng.uniform(5, 14)
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        mask = ((xx * np.cos(angle) + yy * np.sin(angle)) / period) % 1.0 < 0.5
    elif kind == 1:
        mask = ((xx // period + yy // period) % 2) == 0
    else:
        fy, fx = (yy % period) - period / 2, (xx % period) - period / 2
        mask = fy ** 2 + fx ** 2 < (period * 0.3) ** 2
    img = np.where(mask[..., None], c1, c2)
    b = max(1, int(min(h, w) * 0.06))  # a dark frame, as on a poster or a crate
    frame = (yy < b) | (yy >= h - b) | (xx < b) | (xx >= w - b)
    img[frame] = c2 * 0.5
    return img


def _place(rng, sample_rect, taken, tries=30):
    for _ in range(tries):
        rect = sample_rect()
        if rect is not None and not _rect_overlaps(rect, taken):
            return rect
    return None


def sample_layout(rng, height, width):
    """Everything visible in one scene, as a dict of numbers and small arrays."""
    H, W = height, width
    lay = {"H": H, "W": W, "f": 0.9 * W, "horizon": H * rng.uniform(0.12, 0.28),
           "cam_h": rng.uniform(1.1, 1.5), "wall_dist": rng.uniform(3.8, 5.5),
           "tilt": rng.uniform(-0.25, 0.25)}
    xs = np.arange(W) + 0.5
    wall_z = lay["wall_dist"] * (1.0 + lay["tilt"] * (xs - W / 2) / W)
    floor_top = lay["horizon"] + lay["cam_h"] * lay["f"] / wall_z  # first floor row per column
    taken = []

    lay["cabinet"] = None
    if rng.random() < 0.6:
        cw = int(W * rng.uniform(0.12, 0.22))
        x0 = int(rng.integers(2, W - cw - 2))
        z = wall_z[x0:x0 + cw].min() - rng.uniform(0.3, 0.7)
        bottom = int(min(H, lay["horizon"] + lay["cam_h"] * lay["f"] / z))
        top = int(max(2, bottom - rng.uniform(0.8, 1.5) * lay["f"] / z))
        rect = (top, bottom, x0, x0 + cw)
        taken.append(rect)
        lay["cabinet"] = {"rect": rect, "z": z, "color": rng.uniform(40, 120, 3) *
                          np.array([1.0, 0.8, 0.6]), "handle": rng.uniform(180, 240, 3)}

    def wall_rect():
        h, w = int(H * rng.uniform(0.12, 0.25)), int(W * rng.uniform(0.12, 0.28))
        x0 = int(rng.integers(3, W - w - 3))
        limit = int(floor_top[x0:x0 + w].min()) - 4
        if limit - h <= 4:
            return None
        y0 = int(rng.integers(4, limit - h + 1))
        return (y0, y0 + h, x0, x0 + w)

    def floor_rect():
        first = int(np.ceil(floor_top.max())) + 3
        band = H - 2 - first
        if band < 8:
            return None
        h, w = max(4, int(band * rng.uniform(0.2, 0.45))), int(W * rng.uniform(0.15, 0.35))
        y0 = int(rng.integers(first, H - 2 - h + 1))
        x0 = int(rng.integers(2, W - w - 2))
        return (y0, y0 + h, x0, x0 + w)

    lay["wall_objects"], lay["floor_objects"] = [], []
    for key, sampler, count in (("wall_objects", wall_rect, rng.integers(1, 4)),
                                ("floor_objects", floor_rect, rng.integers(1, 3))):
        for _ in range(count):
            rect = _place(rng, sampler, taken)
            if rect is None:
                continue
            taken.append(rect)
            h, w = rect[1] - rect[0], rect[3] - rect[2]
            lay[key].append({"rect": rect, "texture": _pattern(rng, h, w),
                             "offset": rng.uniform(0.3, 0.7) if key == "wall_objects"
                             else rng.uniform(0.25, 0.45)})

    lay["clutter"] = [{"center": (rng.uniform(0, H), rng.uniform(0, W)),
                       "axes": (rng.uniform(3, 10), rng.uniform(3, 12)),
                       "color": rng.uniform(0, 255, 3), "lift": rng.uniform(0.05, 0.3)}
                      for _ in range(rng.integers(0, 4))]
    lay["balls"] = []
    first_floor_row = floor_top.max() + 5
    for _ in range(rng.integers(0, 3) if first_floor_row < H - 5 else 0):
        row = rng.uniform(first_floor_row, H)
        z = lay["cam_h"] * lay["f"] / (row - lay["horizon"])
        radius_m = rng.uniform(0.12, 0.25)
        lay["balls"].append({"row": row, "col": rng.uniform(0, W), "z": z, "radius_m": radius_m,
                             "color": rng.uniform(60, 255, 3)})
    lay["wall_color"] = rng.uniform(140, 230, 3)
    lay["floor_color"] = rng.uniform([90, 60, 30], [170, 120, 80])
    lay["plank_width"] = rng.uniform(0.15, 0.3)
    lay["plank_shades"] = rng.uniform(0.75, 1.15, 64)
    lay["light"] = rng.uniform([0.85, -0.2, -0.15], [1.05, 0.2, 0.15])
    lay["rgb_noise"] = rng.normal(0, 2.5, (H, W, 3))
    lay["depth_noise"] = rng.normal(0, 0.003, (H, W))
    return lay


def sample_raised(rng, lay):
    """Depth-only class bits: True = box / platform, False = poster / rug."""
    return {"wall_objects": [bool(rng.random() < 0.5) for _ in lay["wall_objects"]],
            "floor_objects": [bool(rng.random() < 0.5) for _ in lay["floor_objects"]]}


# ----------------------------------------------------------------------------- rendering

def _room(lay):
    """Metric depth, labels and colours of the empty room."""
    H, W, f = lay["H"], lay["W"], lay["f"]
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    wall_z = lay["wall_dist"] * (1.0 + lay["tilt"] * (xs - W / 2) / W)
    dy = ys - lay["horizon"]
    floor_z = np.where(dy > 0, lay["cam_h"] * f / np.maximum(dy, 1e-6), np.inf)
    is_floor = floor_z < wall_z
    z = np.where(is_floor, floor_z, wall_z)
    label = np.where(is_floor, FLOOR, WALL).astype(np.uint8)
    world_x = (xs - W / 2) * z / f
    plank = np.floor(world_x / lay["plank_width"]).astype(np.int64) % len(lay["plank_shades"])
    grain = 1.0 + 0.05 * np.sin(z * 9.0 + plank)
    floor_rgb = lay["floor_color"] * (lay["plank_shades"][plank] * grain)[..., None]
    wall_rgb = lay["wall_color"] * (1.0 + 0.03 * np.sin(xs * 0.7))[..., None]
    rgb = np.where(is_floor[..., None], floor_rgb, wall_rgb)
    return rgb, z, label, wall_z, floor_z


def render(lay, raised):
    """(bgr uint8 HxWx3, depth uint8 HxW, label uint8 HxW) of a layout and its bits."""
    H, W, f = lay["H"], lay["W"], lay["f"]
    rgb, z, label, wall_z, floor_z = _room(lay)
    for obj, up in zip(lay["wall_objects"], raised["wall_objects"]):
        y0, y1, x0, x1 = obj["rect"]
        rgb[y0:y1, x0:x1] = obj["texture"]
        label[y0:y1, x0:x1] = BOX if up else POSTER
        z[y0:y1, x0:x1] = wall_z[y0:y1, x0:x1] - (obj["offset"] if up else 0.01)
    for obj, up in zip(lay["floor_objects"], raised["floor_objects"]):
        y0, y1, x0, x1 = obj["rect"]
        rgb[y0:y1, x0:x1] = obj["texture"]
        label[y0:y1, x0:x1] = PLATFORM if up else RUG
        lift = (lay["cam_h"] - obj["offset"]) / lay["cam_h"] if up else 1.0
        z[y0:y1, x0:x1] = floor_z[y0:y1, x0:x1] * lift
    cab = lay["cabinet"]
    if cab is not None:
        y0, y1, x0, x1 = cab["rect"]
        rgb[y0:y1, x0:x1] = cab["color"]
        mid = (x0 + x1) // 2
        rgb[y0:y1, mid:mid + 1] = cab["color"] * 0.5
        hy = (y0 + y1) // 2
        rgb[hy - 3:hy + 3, mid - 4:mid - 2] = cab["handle"]
        rgb[hy - 3:hy + 3, mid + 3:mid + 5] = cab["handle"]
        label[y0:y1, x0:x1] = CABINET
        z[y0:y1, x0:x1] = cab["z"]
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    for blob in lay["clutter"]:
        (cy, cx), (ay, ax) = blob["center"], blob["axes"]
        mask = ((ys - cy) / ay) ** 2 + ((xs - cx) / ax) ** 2 < 1.0
        rgb[mask] = blob["color"]
        label[mask] = 0
        z[mask] = z[mask] - blob["lift"]
    for ball in lay["balls"]:
        r = ball["radius_m"] * f / ball["z"]
        cy, cx = ball["row"] - r, ball["col"]
        dist2 = ((ys - cy) ** 2 + (xs - cx) ** 2) / r ** 2
        mask = dist2 < 1.0
        nz = np.sqrt(np.clip(1.0 - dist2[mask], 0, 1))
        shade = 0.35 + 0.65 * np.clip(0.5 * nz + 0.5 * (cy - ys[mask]) / r * 0.6 + 0.3, 0, 1)
        rgb[mask] = ball["color"] * shade[:, None]
        label[mask] = BALL
        z[mask] = ball["z"] - ball["radius_m"] * nz
    a, bx, by = lay["light"]
    light = a + bx * (xs / W - 0.5) + by * (ys / H - 0.5)
    rgb = np.clip(rgb * light[..., None] + lay["rgb_noise"], 0, 255)
    z = z * (1.0 + lay["depth_noise"])
    depth = np.round((z - z.min()) / max(z.max() - z.min(), 1e-9) * 255.0)
    bgr = np.round(rgb[..., ::-1]).astype(np.uint8)
    return np.ascontiguousarray(bgr), depth.astype(np.uint8), label


def _stream(seed, split, index, which):
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split], index, which]))


def generate_sample(seed, split, index, height=240, width=320):
    """(bgr, depth, label) uint8 arrays of one image; a pure function of its arguments."""
    lay = sample_layout(_stream(seed, split, index, 0), height, width)
    return render(lay, sample_raised(_stream(seed, split, index, 1), lay))


# ----------------------------------------------------------------------------- writing

def sample_stem(split, index):
    return f"{split}_{index:04d}"


def _write_range(args):
    root, seed, split, start, stop, height, width = args
    for i in range(start, stop):
        bgr, depth, label = generate_sample(seed, split, i, height, width)
        stem = sample_stem(split, i)
        for folder, img in (("RGB", bgr), ("Depth", depth), ("Label", label)):
            path = osp.join(root, folder, stem + ".png")
            if not cv2.imwrite(path, img):
                raise OSError(f"could not write {path}")
    return stop - start


def _chunks(counts, workers):
    jobs = []
    for split, n in counts.items():
        step = max(1, -(-n // max(1, workers * 2)))
        jobs += [(split, s, min(n, s + step)) for s in range(0, n, step)]
    return jobs


def _write_all(root, seed, counts, height, width, workers):
    for folder in ("RGB", "Depth", "Label"):
        os.makedirs(osp.join(root, folder))
    jobs = [(root, seed, split, a, b, height, width) for split, a, b in _chunks(counts, workers)]
    if workers > 1:
        import multiprocessing as mp
        with mp.get_context("fork").Pool(workers) as pool:
            list(pool.imap_unordered(_write_range, jobs))
    else:
        for job in jobs:
            _write_range(job)
    for split, n in counts.items():
        with open(osp.join(root, f"{split}.txt"), "w") as f:
            f.writelines(f"RGB/{sample_stem(split, i)}.png\n" for i in range(n))


def _meta(seed, train, test, height, width):
    return {"generator": "utils.dataloader.synthetic", "version": GENERATOR_VERSION,
            "seed": int(seed), "train": int(train), "test": int(test),
            "height": int(height), "width": int(width), "class_names": list(CLASS_NAMES)}


def read_meta(root):
    """The generation parameters stored in ``root/meta.json``, or None."""
    path = osp.join(root, "meta.json")
    if not osp.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_tmp(parent, base):
    """Drop temporary folders left by generations whose process has died."""
    prefix = f".{base}.tmp-"
    for entry in os.listdir(parent):
        if not entry.startswith(prefix):
            continue
        pid = entry[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(osp.join(parent, entry), ignore_errors=True)


def generate_dataset(out, train=400, test=100, seed=0, height=240, width=320, workers=1,
                     overwrite=False, verbose=True):
    """Write the dataset to ``out`` atomically (temporary folder, then rename).

    An interrupted run leaves at most a hidden temporary folder, removed by the
    next run. Returns the seconds spent.
    """
    start = time.time()
    out = osp.abspath(out)
    parent, base = osp.dirname(out), osp.basename(out)
    os.makedirs(parent, exist_ok=True)
    if osp.exists(out) and not overwrite:
        raise SyntheticDatasetError(f"{out} already exists (use overwrite/--force to replace it)")
    _remove_stale_tmp(parent, base)
    tmp = tempfile.mkdtemp(prefix=f".{base}.tmp-{os.getpid()}-", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the dataset should not be
    try:
        _write_all(tmp, seed, {"train": train, "test": test}, height, width, workers)
        with open(osp.join(tmp, "meta.json"), "w") as f:
            json.dump(_meta(seed, train, test, height, width), f, indent=1)
        if osp.exists(out):
            old = tmp + "-old"
            os.rename(out, old)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    finally:
        if osp.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.time() - start
    if verbose:
        print(f"SynthRGBD: wrote {train} train + {test} test images ({height}x{width}, seed {seed}) "
              f"to {out} in {seconds:.1f}s")
    return seconds


def ensure_synthetic_dataset(cfg, workers=1, verbose=True):
    """Generate ``cfg.dataset_path`` on first use; check an existing one matches ``cfg``.

    Parameters come from the config: ``synthetic_seed``, ``num_train_imgs``,
    ``num_eval_imgs`` and ``synthetic_size`` (image height, width; the training crop
    ``image_height`` x ``image_width`` may be smaller).
    """
    root = cfg.dataset_path
    height, width = cfg.get("synthetic_size", (cfg.image_height, cfg.image_width))
    # synthetic_counts: the generated sizes when num_train_imgs/num_eval_imgs were overridden
    n_train, n_test = cfg.get("synthetic_counts") or (cfg.num_train_imgs, cfg.num_eval_imgs)
    want = _meta(cfg.get("synthetic_seed", 0), n_train, n_test, height, width)
    have = read_meta(root)
    if have is None and not osp.exists(root):
        try:
            generate_dataset(root, want["train"], want["test"], want["seed"], want["height"],
                             want["width"], workers=workers, verbose=verbose)
        except (OSError, SyntheticDatasetError):
            # Another process may have finished the same generation first.
            if read_meta(root) != want:
                raise
        return root
    if have is None:
        raise SyntheticDatasetError(f"{root} exists but has no meta.json: it was not written by "
                                    "the synthetic generator. Move it away to regenerate.")
    if have != want:
        diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
        raise SyntheticDatasetError(f"{root} was generated with different settings "
                                    f"(on disk, requested): {diff}. Delete the folder to "
                                    "regenerate, or change the config.")
    return root


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=osp.join("datasets", "SynthRGBD"))
    parser.add_argument("--train", type=int, default=400)
    parser.add_argument("--test", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--workers", type=int, default=1, help="processes used to write")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)
    generate_dataset(args.out, args.train, args.test, args.seed, args.height, args.width,
                     workers=args.workers, overwrite=args.force)


if __name__ == "__main__":
    main()
