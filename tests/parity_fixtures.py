"""Parity fixtures that travel with the repository, and the reference's synthetic weights.

The full fixture set (PyTorch reference outputs for several cases, 71 MB) lives outside the
repository: ``$DFORMER_PARITY_ROOT``, else ``../shared/parity``. A compact subset is kept in
``tests/fixtures/parity`` so that every clone runs the parity tests:

* ``manifest.json.gz``: the full set's manifest (state-dict keys, shapes and generation
  kinds, configs, parameter and FLOP counts of all 14 official configs);
* ``<Dataset>/<Config>/<case>.npz`` for DFormer-Tiny and DFormerv2-S (NYUDepthv2, 96x128):
  the input images as the files hold them, the NMF bases, the four backbone features and
  the decode-head output before the final upsampling; ``<case>.json``: the weight seed, the
  weights' content digest and the sha256 of the preprocessed input tensors.

Weights are not stored: :func:`synthetic_weights` regenerates them from the manifest entry
and the seed (one ``numpy.random.RandomState`` walks the state dict in manifest order;
each float tensor is drawn in float64 by its kind and cast to float32).

Rebuild the subset from a full set: ``python tests/parity_fixtures.py [FULL_ROOT]``.
"""
import gzip
import hashlib
import json
import os
import sys
from collections import OrderedDict

import numpy as np

BUNDLE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "parity")
BUNDLED_CASES = {"NYUDepthv2/DFormer_Tiny": "case0_96x128",
                 "NYUDepthv2/DFormerv2_S": "case0_96x128"}
CASE_ARRAYS = ("rgb_file_uint8", "depth_file_uint8", "nmf_bases", "feat_0", "feat_1", "feat_2",
               "feat_3", "decode_head_out")


# ----------------------------------------------------------------------------- weights

def _draw(rng, kind, fan_in, shape):
    """One float64 tensor of ``kind`` (the manifest's generation kinds)."""
    if kind in ("conv_weight", "linear_weight"):
        return rng.normal(0.0, 1.0 / np.sqrt(fan_in), size=shape)
    if kind == "norm_weight":
        return rng.normal(0.0, 0.1, size=shape) + 1.0
    if kind == "bias":
        return rng.normal(0.0, 0.02, size=shape)
    if kind == "layer_scale":
        return rng.uniform(0.1, 0.5, size=shape)
    if kind == "geo_mix_weight":
        return rng.uniform(0.5, 1.5, size=shape)
    if kind == "bn_running_mean":
        return rng.normal(0.0, 0.1, size=shape)
    if kind == "bn_running_var":
        return rng.uniform(0.5, 1.5, size=shape)
    raise ValueError(f"unknown generation kind {kind!r}")


def synthetic_weights(entry, seed):
    """State dict (key -> numpy array, manifest order) of the reference's synthetic weights."""
    rng = np.random.RandomState(seed)
    kinds = {key: (kind, fan_in) for key, kind, fan_in, _ in entry["state_dict_info"]}
    state = OrderedDict()
    for key, shape, dtype in entry["state_dict"]:
        kind, fan_in = kinds[key]
        shape = tuple(shape)
        if kind == "num_batches_tracked":       # counters: zero, no draw
            state[key] = np.zeros(shape, np.int64)
        elif kind == "computed_buffer":         # the model's own values, no draw
            state[key] = np.asarray(entry["computed_buffers"][key], np.float32).reshape(shape)
        else:
            state[key] = np.ascontiguousarray(_draw(rng, kind, fan_in, shape), np.float32)
    return state


def content_digest(state):
    """sha256 over every entry's key, dtype, shape and little-endian bytes, in order (the
    full set's ``weights.json`` ``state_dict_content_digest``)."""
    h = hashlib.sha256()
    for key, value in state.items():
        value = np.asarray(value, order="C")  # (ascontiguousarray would make 0-d 1-d)
        for part in (key, str(value.dtype), str(tuple(value.shape))):
            h.update(part.encode())
        h.update(value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes())
    return h.hexdigest()


def array_sha256(array):
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# ----------------------------------------------------------------------------- reading

def bundled_manifest():
    with gzip.open(os.path.join(BUNDLE, "manifest.json.gz"), "rt") as f:
        return json.load(f)


def bundled_case(config_id):
    """(arrays dict, info dict) of the bundled case of ``config_id``."""
    stem = os.path.join(BUNDLE, config_id, BUNDLED_CASES[config_id])
    with np.load(stem + ".npz") as data:
        arrays = {name: data[name] for name in CASE_ARRAYS}
    with open(stem + ".json") as f:
        return arrays, json.load(f)


# ----------------------------------------------------------------------------- building

def build(full_root):
    """Write the bundled subset from the full fixture set at ``full_root``."""
    os.makedirs(BUNDLE, exist_ok=True)
    with open(os.path.join(full_root, "manifest.json"), "rb") as f:
        raw = f.read()
    with gzip.GzipFile(os.path.join(BUNDLE, "manifest.json.gz"), "wb", 9, mtime=0) as f:
        f.write(raw)
    manifest = json.loads(raw)
    for config_id, case in BUNDLED_CASES.items():
        src = os.path.join(full_root, config_id, case)
        with open(os.path.join(full_root, config_id, "weights.json")) as f:
            weights = json.load(f)
        seed = int(weights["weight_seed"])
        digest = content_digest(synthetic_weights(manifest["configs"][config_id], seed))
        if digest != weights["state_dict_content_digest"]:
            raise SystemExit(f"{config_id}: regenerated weights differ from the full set")
        out = os.path.join(BUNDLE, config_id)
        os.makedirs(out, exist_ok=True)
        np.savez_compressed(os.path.join(out, case + ".npz"),
                            **{name: np.load(os.path.join(src, name + ".npy"))
                               for name in CASE_ARRAYS})
        info = {"config": config_id, "case": case, "weight_seed": seed,
                "weights_content_digest": digest,
                "rgb_sha256": array_sha256(np.load(os.path.join(src, "rgb.npy"))),
                "depth_sha256": array_sha256(np.load(os.path.join(src, "depth.npy"))),
                "source": "the full parity set (PyTorch reference, see its README)"}
        with open(os.path.join(out, case + ".json"), "w") as f:
            json.dump(info, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(here), "shared",
                                                              "parity"))
