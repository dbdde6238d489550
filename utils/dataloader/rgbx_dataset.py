"""RGB-D segmentation dataset in the NYUDepthv2 / SUNRGBD layout, as a Jittor Dataset.

Layout (the reference's RGBXDataset)::

    <dataset_path>/RGB/<name><rgb_format>   Depth/<name><x_format>
    <dataset_path>/<Label|labels>/<name><gt_format>   train.txt   test.txt

Each split line looks like ``RGB/<name>.jpg``; the name is the text after the first
"/", cut at the first ".jpg", with ".jpg"/".png" removed.

Items are dicts::

    rgb    float32 (3, H, W)  normalised colour, channel order per cfg.color_order
    depth  float32 (3, H, W)  normalised depth, three identical channels
    label  int32   (H, W)     class index 0..num_classes-1, 255 = ignore
    fn     str                path of the RGB file

Batches (Jittor's collation) hold ``jt.Var`` for the arrays and a list of str for ``fn``.
As everywhere in Jittor, ``len(dataset)`` counts batches; ``dataset.num_samples`` counts
samples per epoch.

Reproducible randomness
-----------------------
Every random choice is a function of ``(seed, epoch, position)``:

* the epoch's sample order is a permutation drawn from ``(seed, epoch)``
  (when ``shuffle`` is set; Jittor's own shuffle is not used);
* the training length is ``batch_size * niters_per_epoch``: the split list is
  repeated ``length // n`` times and the remaining ``length % n`` positions take
  files from a permutation drawn from ``(seed, epoch)``. The reference redraws
  that tail at every item access; here it is drawn once per epoch (same
  distribution over an epoch, but reproducible);
* the augmentation of the sample at ``position`` uses its own generator seeded
  from ``(seed, epoch, position)``.

The epoch travels inside the indices the sampler hands out (``epoch * length +
position``), so a worker preparing a batch never reads the dataset's current
epoch, which may already have moved on. A completed pass
selects the next epoch; call ``dataset.set_epoch(epoch)`` to choose one
explicitly, and ``dataset.set_epoch(epoch, start_iter=k)`` to skip the first
``k`` batches: a run resumed at iteration ``k`` then gets exactly the batches an
uninterrupted run gets from there on, whatever ``num_workers`` is.
"""
import os.path as osp

import cv2
import numpy as np

from jittor.dataset import Dataset
from jittor.dataset.sampler import Sampler

from .transforms import (IGNORE_LABEL, SUN_PAD_SIZE, EvalTransform, TrainTransform,
                         read_depth_file)
from .workers import OrderedPrefetcher

_TAG_ORDER, _TAG_TAIL, _TAG_SAMPLE = 1, 2, 3
_MAX_INDEX = 2 ** 31 - 1  # Jittor's MPI sharding handles indices as int32
DEFAULT_LOADER_TIMEOUT = 600.0  # seconds a batch may be late before the run stops (cfg.loader_timeout)


from utils.errors import DataError  # noqa: E402  (re-exported)


# ----------------------------------------------------------------------------- split files

def sample_name(entry):
    """Sample name of one split line, by the reference's NYUDepthv2/SUNRGBD rule."""
    if "/" not in entry:
        raise ValueError("expected '<folder>/<name>.<ext>'")
    name = entry.split("/", 1)[1].split(".jpg")[0]
    name = name.replace(".jpg", "").replace(".png", "")
    if not name:
        raise ValueError("empty sample name")
    return name


def read_split(path):
    """Sample names listed in a split file; blank lines are skipped.

    Raises DataError (naming the file and line) for a missing, empty or
    malformed split file.
    """
    if not osp.isfile(path):
        raise DataError(f"split file not found: {path}")
    names = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            entry = line.strip()
            if not entry:
                continue
            try:
                names.append(sample_name(entry))
            except ValueError as exc:
                raise DataError(f"{path}:{lineno}: malformed entry {entry!r} ({exc})") from None
    if not names:
        raise DataError(f"split file lists no samples: {path}")
    return names


# ----------------------------------------------------------------------------- decoding

class SampleFiles:
    """Paths and decoding of one dataset's samples (no augmentation, no Jittor)."""

    def __init__(self, cfg):
        self.rgb_root, self.rgb_format = cfg.rgb_root_folder, cfg.rgb_format
        self.x_root, self.x_format = cfg.x_root_folder, cfg.x_format
        self.gt_root, self.gt_format = cfg.gt_root_folder, cfg.gt_format
        self.gt_transform = bool(cfg.gt_transform)
        self.num_classes = int(cfg.num_classes)
        self.ignore_label = int(cfg.get("background", IGNORE_LABEL))
        self.color_order = str(cfg.get("color_order", "BGR")).upper()
        if self.color_order not in ("BGR", "RGB"):
            raise ValueError(f"color_order must be 'BGR' or 'RGB', got {self.color_order!r}")

    def paths(self, name):
        return {
            "rgb": osp.join(self.rgb_root, name + self.rgb_format),
            "depth": osp.join(self.x_root, name + self.x_format),
            "label": osp.join(self.gt_root, name + self.gt_format),
        }

    def check_exist(self, names, split_path):
        """Fail early, listing the first missing files, if any sample lacks a file."""
        missing = [p for name in names for p in self.paths(name).values() if not osp.isfile(p)]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            raise DataError(f"{len(missing)} file(s) listed in {split_path} are missing: "
                            f"{', '.join(missing[:3])}{more}; check dataset_path or the list")

    def load(self, name):
        """Decoded (rgb HxWx3 uint8, depth HxWx3 uint8, label HxW uint8, rgb path).

        16-bit and float depth is normalised per image (transforms.depth_to_uint8).
        """
        paths = self.paths(name)
        rgb = self._read_rgb(paths["rgb"])
        depth = read_depth_file(paths["depth"])
        if depth is None:
            _imread(paths["depth"], cv2.IMREAD_UNCHANGED)  # raises naming the problem
            raise DataError(f"unusable depth image (expected one channel): {paths['depth']}")
        label = _imread(paths["label"], cv2.IMREAD_GRAYSCALE)
        for key, img in (("depth", depth), ("label", label)):
            if img.shape[:2] != rgb.shape[:2]:
                raise DataError(f"size mismatch: {paths[key]} is {img.shape[0]}x{img.shape[1]} "
                                f"but {paths['rgb']} is {rgb.shape[0]}x{rgb.shape[1]}")
        if self.gt_transform:
            label = label - np.uint8(1)  # uint8 wrap: unlabeled 0 becomes 255
        self._check_label(label, paths["label"])
        return rgb, np.dstack([depth, depth, depth]), label, paths["rgb"]

    def _read_rgb(self, path):
        img = _imread(path, cv2.IMREAD_UNCHANGED)
        if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise DataError(f"expected an 8-bit 3-channel colour image: {path} "
                            f"(got dtype {img.dtype}, shape {img.shape})")
        if self.color_order == "RGB":
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return img

    def _check_label(self, label, path):
        values = np.flatnonzero(np.bincount(label.ravel(), minlength=256))  # uint8: no sort
        bad = values[(values >= self.num_classes) & (values != self.ignore_label)]
        if bad.size:
            shift = " after subtracting 1" if self.gt_transform else ""
            raise DataError(f"label values {bad.tolist()} out of range{shift} in {path}: "
                            f"expected 0..{self.num_classes - 1} or {self.ignore_label}")


def _imread(path, flags):
    img = cv2.imread(path, flags)
    if img is None:
        what = "missing" if not osp.isfile(path) else "unreadable or corrupt"
        raise DataError(f"{what} image: {path}")
    return img


# ----------------------------------------------------------------------------- randomness

def _rng(*key):
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def epoch_file_indices(num_files, length, seed, epoch):
    """File index of every position of an epoch of ``length`` samples.

    The file list repeated ``length // num_files`` times, then ``length % num_files``
    distinct files drawn from ``(seed, epoch)``.
    """
    reps, tail = divmod(length, num_files)
    head = np.tile(np.arange(num_files), reps)
    extra = _rng(seed, epoch, _TAG_TAIL).permutation(num_files)[:tail]
    return np.concatenate([head, extra]).astype(np.int64)


def epoch_order(length, seed, epoch, shuffle):
    """Order in which an epoch visits its positions."""
    if not shuffle:
        return np.arange(length)
    return _rng(seed, epoch, _TAG_ORDER).permutation(length)


def sample_rng(seed, epoch, position):
    """Generator driving the augmentation of one sample."""
    return _rng(seed, epoch, _TAG_SAMPLE, position)


# ----------------------------------------------------------------------------- Jittor dataset

class EpochSampler(Sampler):
    """This pass's encoded indices (``epoch * length + position``), in the epoch's order.

    Jittor's ``Dataset`` reads the order from its sampler and shards it across MPI
    processes; honours ``dataset.shuffle`` and ``dataset.start_iter``.
    """

    def __iter__(self):
        ds = self.dataset
        return iter(ds.epoch_indices(ds.epoch, ds.start_iter).tolist())

    def __len__(self):
        ds = self.dataset
        return max(ds.num_samples - ds.start_iter * ds.batch_size, 0)


class RGBXDataset(Dataset):
    """RGB-D samples of one split; see the module docstring for items and randomness.

    Iterating yields batches in a fixed order, then selects the next epoch. With
    ``num_workers > 0`` batches are prepared by that many threads and delivered
    strictly in order (utils/dataloader/workers.py: why threads, and how errors, a
    stuck read and shutdown end in bounded time). Jittor's own workers are not
    used: they may swap neighbouring batches, which would break exact resumption.

    Args:
        cfg: experiment config (EasyDict).
        split: "train" or "val" ("test"/"eval" are accepted for "val").
        augment: training augmentation; defaults to ``split == "train"``.
        length: samples per epoch; defaults to ``batch_size * niters_per_epoch``
            for training and to the split size otherwise.
        seed: defaults to ``cfg.seed``.
        check_files: verify at construction that every listed file exists.
    """

    def __init__(self, cfg, split="train", augment=None, length=None, seed=None,
                 check_files=True):
        super().__init__()
        if split in ("test", "eval"):
            split = "val"
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if cfg.get("synthetic"):
            from .synthetic import ensure_synthetic_dataset
            ensure_synthetic_dataset(cfg)
        self.split = split
        self.augment = (split == "train") if augment is None else bool(augment)
        self.files = SampleFiles(cfg)
        split_path = cfg.train_source if split == "train" else cfg.eval_source
        self.names = read_split(split_path)
        if split == "val" and cfg.get("val_file_length"):
            self.names = self.names[:int(cfg.val_file_length)]  # the first N samples
        if check_files:
            self.files.check_exist(self.names, split_path)
        if length is None:
            length = cfg.batch_size * cfg.niters_per_epoch if split == "train" else len(self.names)
        self.num_samples = int(length)
        self.seed = int(cfg.seed if seed is None else seed)
        self.epoch, self.start_iter = 0, 0
        self.transform = self._make_transform(cfg)
        self._file_index = None
        self._prefetcher = None
        self.loader_timeout = float(cfg.get("loader_timeout", DEFAULT_LOADER_TIMEOUT))
        self.set_attrs(total_len=self.num_samples)
        EpochSampler(self)

    def _make_transform(self, cfg):
        ignore = self.files.ignore_label
        if self.augment:
            return TrainTransform((cfg.image_height, cfg.image_width), cfg.train_scale_array,
                                  cfg.norm_mean, cfg.norm_std,
                                  depth_single_channel=cfg.x_is_single_channel,
                                  ignore_label=ignore)
        pad_to = SUN_PAD_SIZE if cfg.get("pad_SUNRGBD") else None
        return EvalTransform(cfg.norm_mean, cfg.norm_std, pad_to=pad_to, ignore_label=ignore)

    # -- epochs

    def set_epoch(self, epoch, start_iter=0):
        """Select the epoch whose order/tail/augmentation the next pass uses.

        ``start_iter`` skips that many batches of the epoch (for resuming).
        """
        epoch, start_iter = int(epoch), int(start_iter)
        if epoch < 0 or start_iter < 0:
            raise ValueError("epoch and start_iter must be non-negative")
        self.epoch_indices(epoch)  # validates the range
        self.epoch, self.start_iter = epoch, start_iter

    def epoch_indices(self, epoch, start_iter=0):
        """Encoded indices (``epoch * length + position``) of one pass, in visiting order."""
        if (epoch + 1) * self.num_samples > _MAX_INDEX:
            raise ValueError(f"epoch {epoch} too large for {self.num_samples} samples per epoch")
        order = epoch_order(self.num_samples, self.seed, epoch, self.shuffle)
        return epoch * self.num_samples + order[start_iter * self.batch_size:]

    def file_index(self, epoch, position):
        """Index into ``self.names`` of the sample at ``position`` of ``epoch``."""
        cached = self._file_index  # one read: loader threads may replace it concurrently
        if cached is None or cached[0] != epoch:
            cached = (epoch, epoch_file_indices(len(self.names), self.num_samples, self.seed,
                                                epoch))
            self._file_index = cached
        return int(cached[1][position])

    # -- items

    def __getitem__(self, index):
        epoch, position = divmod(int(index), self.num_samples)
        return self.get_sample(position, epoch)

    def get_sample(self, position, epoch=None):
        """The item at ``position`` of ``epoch`` (default: the current epoch)."""
        epoch = self.epoch if epoch is None else epoch
        if not 0 <= position < self.num_samples:
            raise IndexError(f"position {position} out of range 0..{self.num_samples - 1}")
        name = self.names[self.file_index(epoch, position)]
        rgb, depth, label, fn = self.files.load(name)
        rng = sample_rng(self.seed, epoch, position) if self.augment else None
        try:
            rgb, depth, label = self.transform(rgb, depth, label, rng)
        except ValueError as exc:
            raise DataError(f"cannot preprocess {fn}: {exc}") from exc
        return {"rgb": rgb, "depth": depth, "label": label.astype(np.int32), "fn": fn}

    def load_batch(self, indices):
        """Collated numpy batch of the given encoded indices."""
        return self.collate_batch([self[int(i)] for i in indices])

    # -- iteration

    def __iter__(self):
        """One pass over the selected epoch (in order); afterwards the next epoch is selected."""
        index_list = np.asarray(self._get_index_list())  # sampler order, sharded under MPI
        size = self.real_batch_size
        chunks = [index_list[k * size:(k + 1) * size] for k in range(self.batch_len)]
        if self.num_workers > 0 and not self._disable_workers:
            batches = self._threaded_batches(chunks)
        else:
            batches = (self.load_batch(chunk) for chunk in chunks)
        for batch in batches:
            yield self.to_jittor(batch)
        self.epoch, self.start_iter = self.epoch + 1, 0

    def _threaded_batches(self, chunks):
        """Batches prepared by ``num_workers`` threads (utils/dataloader/workers.py), in order."""
        prefetcher = OrderedPrefetcher(self.load_batch, chunks, self.num_workers,
                                       timeout=self.loader_timeout, describe=self._describe,
                                       name=f"{self.split}-loader")
        self._prefetcher = prefetcher
        try:
            yield from prefetcher
        finally:
            prefetcher.close()
            self._prefetcher = None

    def _describe(self, indices):
        """The RGB files of a chunk of encoded indices (for error messages)."""
        names = []
        for index in indices[:4]:
            epoch, position = divmod(int(index), self.num_samples)
            names.append(self.files.paths(self.names[self.file_index(epoch, position)])["rgb"])
        return ", ".join(names) + (", ..." if len(indices) > 4 else "")

    def terminate(self):
        """Stop the loader threads of a pass in progress (bounded; a new pass starts new ones)."""
        prefetcher = getattr(self, "_prefetcher", None)
        if prefetcher is not None:
            prefetcher.close()
            self._prefetcher = None
        super().terminate()

    def reset(self):
        self.terminate()
        super().reset()

    def __del__(self):
        try:
            self.terminate()
        except Exception:
            pass


# ----------------------------------------------------------------------------- builders

def build_train_loader(cfg, seed=None, num_workers=None, batch_size=None, shuffle=True):
    """Training dataset: batches of ``cfg.batch_size``, seeded shuffle, drop_last.

    Each completed pass moves on to the next epoch; ``loader.set_epoch(epoch)``
    selects one explicitly and ``loader.set_epoch(epoch, start_iter=k)`` resumes
    inside it.
    """
    ds = RGBXDataset(cfg, "train", seed=seed)
    return ds.set_attrs(batch_size=batch_size or cfg.batch_size, shuffle=shuffle, drop_last=True,
                        num_workers=cfg.num_workers if num_workers is None else num_workers)


def default_val_batch_size(cfg):
    """Validation batch size of the reference: 1 for SUN RGB-D (sizes vary), 8 when SUN
    is padded to a common size, ``cfg.batch_size`` for NYU and other datasets."""
    if cfg.dataset_name == "SUNRGBD":
        return 8 if cfg.get("pad_SUNRGBD") else 1
    return cfg.batch_size


def build_val_loader(cfg, batch_size=None, num_workers=None):
    """Evaluation dataset: native resolution, fixed order, keeps the last partial batch."""
    ds = RGBXDataset(cfg, "val")
    return ds.set_attrs(batch_size=batch_size or default_val_batch_size(cfg), shuffle=False,
                        drop_last=False,
                        num_workers=cfg.num_workers if num_workers is None else num_workers)
