"""mmseg 1.x's ``MMSegInferencer`` for RGB-D input, on :func:`mmseg.apis.inference_model`.

Inputs: one RGB-D input (``{'img': rgb, 'modal_x': depth}`` / ``(rgb, depth)``, paths or
arrays), a list of them, or a folder pair (``{'img': rgb_dir, 'modal_x': depth_dir}`` /
``(rgb_dir, depth_dir)``: files paired by stem). Outputs as in mmseg 1.x:

* by default a dict with ``predictions`` ((H, W) class maps; one map for one input)
  and ``visualization`` (RGB drawings with ``return_vis``, else ``[]``); with
  ``out_dir`` the class maps go to ``out_dir/pred/%08d_pred.png``;
* ``return_datasamples=True``: the bare :class:`~mmseg.structures.SegDataSample` (a list
  for several inputs) instead of the dict, and no class-map files;

either way the drawings go to ``out_dir/vis/<image name>`` (``%08d_vis.jpg`` for arrays)
when ``out_dir`` is given. A keyword mmseg does not know here is an error.
"""
import os

from utils.errors import ConfigError, InputError, KeywordError

from .inference import init_model, inference_model, split_rgbd

__all__ = ["MMSegInferencer"]


def _is_dir_pair(inputs):
    try:
        rgb, depth = split_rgbd(inputs)
    except InputError:
        return False
    return isinstance(rgb, (str, os.PathLike)) and os.path.isdir(rgb)


def _check_scope(scope):
    if scope not in (None, "mmseg"):
        raise ConfigError(f"MMSegInferencer: scope {scope!r} is not supported (only 'mmseg')")


class MMSegInferencer:
    """Segment RGB-D images with a config (name or path) or an already built model.

    Args:
        model: config name / path, or a model from :func:`init_model`.
        weights: checkpoint path (random weights with a warning when None).
        classes, palette: override the class names / RGB palette of the drawings.
        dataset_name: take classes and palette of that dataset ('NYUDepthv2', ...).
        device: 'cpu', 'cuda', 'cuda:N' or None (GPU when available).
    """

    def __init__(self, model, weights=None, classes=None, palette=None, dataset_name=None,
                 device=None, scope="mmseg", cfg_options=None):
        _check_scope(scope)
        if isinstance(model, (str, os.PathLike, dict)):
            model = init_model(model, weights, device=device, cfg_options=cfg_options)
        elif getattr(model, "cfg", None) is None:
            raise InputError("MMSegInferencer needs a config name/path or a model from init_model")
        else:
            given = [k for k, v in (("weights", weights), ("device", device),
                                    ("cfg_options", cfg_options)) if v is not None]
            if given:
                raise ConfigError(f"MMSegInferencer: {given[0]} applies to a config, not to an "
                                  "already built model (pass it to init_model instead)")
        self.model = model
        self.cfg = model.cfg
        from mmseg.utils import dataset_meta
        from mmseg.visualization import SegLocalVisualizer
        meta = dict(getattr(model, "dataset_meta", None) or dataset_meta(model.cfg))
        self.visualizer = SegLocalVisualizer()
        self.visualizer.set_dataset_meta(meta["classes"], meta["palette"])
        if dataset_name:
            self.visualizer.set_dataset_meta(dataset_name=dataset_name)
        if classes is not None or palette is not None:
            self.visualizer.set_dataset_meta(classes, palette)
        self.num_visualized_imgs = 0
        self.num_pred_imgs = 0

    # ------------------------------------------------------------------ inputs
    def _inputs_to_list(self, inputs):
        if _is_dir_pair(inputs):
            from utils.infer import folder_jobs
            rgb_dir, depth_dir = split_rgbd(inputs)
            jobs, skipped, _ = folder_jobs(os.fspath(rgb_dir), os.fspath(depth_dir))
            if skipped:
                raise InputError(f"{len(skipped)} RGB image(s) have no depth partner: {skipped[0]}")
            return [{"img": job.rgb, "modal_x": job.depth} for job in jobs]
        if isinstance(inputs, dict) or (isinstance(inputs, tuple) and len(inputs) == 2
                                        and not isinstance(inputs[0], (dict, tuple))):
            return [inputs]
        if isinstance(inputs, (list, tuple)):
            if not inputs:
                raise InputError("no inputs given")
            return list(inputs)
        split_rgbd(inputs)  # raises: no depth
        raise InputError(f"unsupported input {type(inputs).__name__}")

    # ------------------------------------------------------------------ call
    def __call__(self, inputs, return_datasamples=False, batch_size=1, return_vis=False,
                 show=False, wait_time=0, out_dir="", img_out_dir="vis", pred_out_dir="pred",
                 opacity=0.8, with_labels=True, tta=False, sliding=False, **kwargs):
        """Segment ``inputs``; ``tta`` / ``sliding`` are this project's test-time passes
        (see :func:`~mmseg.apis.inference_model`), the rest are mmseg's arguments."""
        if kwargs:
            key = sorted(kwargs)[0]
            hint = " (did you mean return_datasamples?)" if key == "return_datasample" else ""
            raise KeywordError(f"MMSegInferencer: unknown argument {key!r}{hint}; accepted: "
                              "return_datasamples, batch_size, return_vis, show, wait_time, "
                              "out_dir, img_out_dir, pred_out_dir, opacity, with_labels, tta, "
                              "sliding")
        items = self._inputs_to_list(inputs)
        if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < 1:
            raise ConfigError(f"MMSegInferencer: batch_size must be an integer >= 1 (got {batch_size!r})")
        vis_dir = os.path.join(out_dir, img_out_dir) if out_dir else ""
        pred_dir = os.path.join(out_dir, pred_out_dir) if out_dir else ""
        samples, drawings = [], []
        for item in items:  # one at a time: inputs may differ in size
            sample = inference_model(self.model, item, tta=tta, sliding=sliding)
            drawing = self._visualize(item, sample, return_vis, show, wait_time, vis_dir,
                                      opacity, with_labels)
            if drawing is not None:
                drawings.append(drawing)
            samples.append(sample)
        if return_datasamples:
            return samples[0] if len(samples) == 1 else samples
        predictions = [self._postprocess(sample, pred_dir) for sample in samples]
        return {"predictions": predictions[0] if len(predictions) == 1 else predictions,
                "visualization": drawings[0] if len(drawings) == 1 else drawings}

    def _postprocess(self, sample, pred_dir):
        pred = sample.pred_sem_seg.data[0]
        if pred_dir:
            from utils.visualize import save_index
            save_index(os.path.join(pred_dir, f"{self.num_pred_imgs:08d}_pred.png"), pred)
        self.num_pred_imgs += 1
        return pred

    def _visualize(self, item, sample, return_vis, show, wait_time, vis_dir, opacity, with_labels):
        if not (return_vis or show or vis_dir):
            return None
        from utils import api
        rgb, _ = split_rgbd(item)
        bgr, _ = api.read_rgb(rgb)
        if isinstance(rgb, (str, os.PathLike)):
            name = os.path.basename(os.fspath(rgb))
        else:
            name = f"{self.num_visualized_imgs:08d}_vis.jpg"
        out_file = os.path.join(vis_dir, name) if vis_dir else None
        self.visualizer.alpha = float(opacity)
        drawing = self.visualizer.add_datasample(name, bgr[:, :, ::-1].copy(), sample, draw_gt=False,
                                                 show=show, wait_time=wait_time, out_file=out_file,
                                                 with_labels=with_labels)
        self.num_visualized_imgs += 1
        return drawing if return_vis else None

    @staticmethod
    def list_models(scope="mmseg"):
        """The config names ``model`` accepts."""
        _check_scope(scope)
        from local_configs import list_configs
        return list_configs()

