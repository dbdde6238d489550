"""mmseg's ``SegLocalVisualizer`` drawing with this project's palettes and overlay."""
import os
import warnings

import cv2
import numpy as np

__all__ = ["SegLocalVisualizer"]

_NON_INTERACTIVE = ("agg", "cairo", "pdf", "pgf", "ps", "svg", "template")
_NO_DISPLAY_WARNED = []


class SegLocalVisualizer:
    """Draws semantic segmentation over an image, as mmseg's visualizer does.

    ``add_datasample`` blends the class colours (``alpha`` = weight of the colour)
    over the RGB image, once for ``gt_sem_seg`` and once for ``pred_sem_seg`` when
    both are drawn (ground truth on the left), optionally labelling each class
    region with its name, then writes ``out_file`` (BGR, via OpenCV) or stores the
    drawing under ``save_dir/vis_data/vis_image/<name>_<step>.png``.
    Images are RGB uint8 (H, W, 3).
    """

    def __init__(self, name="visualizer", image=None, vis_backends=None, save_dir=None,
                 classes=None, palette=None, dataset_name=None, alpha=0.8):
        for backend in vis_backends or ():
            kind = backend.get("type") if isinstance(backend, dict) else backend
            if kind != "LocalVisBackend":
                from utils.errors import ConfigError
                raise ConfigError(f"SegLocalVisualizer: vis_backends {kind!r} is not supported "
                                  "(drawings are files under save_dir: LocalVisBackend)")
        self.name = name
        self.save_dir = save_dir
        self.alpha = float(alpha)
        self.dataset_meta = {}
        self._image = None if image is None else np.asarray(image, dtype=np.uint8)
        if classes is not None or palette is not None or dataset_name is not None:
            self.set_dataset_meta(classes, palette, dataset_name)

    def set_dataset_meta(self, classes=None, palette=None, dataset_name=None):
        """Class names and (N, 3) RGB palette; a dataset name ('NYUDepthv2', 'SUNRGBD',
        'SynthRGBD') gives what ``classes`` / ``palette`` leave unset."""
        if dataset_name and (classes is None or palette is None):
            from mmseg.utils import get_classes, get_palette
            classes = classes if classes is not None else get_classes(dataset_name)
            palette = palette if palette is not None else get_palette(dataset_name)
        if classes is not None:
            self.dataset_meta["classes"] = tuple(classes)
        if palette is not None:
            self.dataset_meta["palette"] = [list(map(int, c)) for c in palette]

    def set_image(self, image):
        self._image = np.asarray(image, dtype=np.uint8)

    def get_image(self):
        return self._image

    def _palette_table(self, num):
        from utils.visualize import IGNORE_COLOR, distinct_palette
        table = distinct_palette(max(min(num, 255), 1))
        colors = self.dataset_meta.get("palette")
        if colors:
            table[:len(colors)] = np.asarray(colors, dtype=np.uint8)[:256]
        table[255] = IGNORE_COLOR
        return table

    def _draw_sem_seg(self, image, sem_seg, with_labels):
        from utils.visualize import colorize, overlay
        seg = np.asarray(sem_seg.data if hasattr(sem_seg, "data") else sem_seg)
        seg = seg[0] if seg.ndim == 3 else seg
        if seg.shape != image.shape[:2]:
            raise ValueError(f"segmentation {seg.shape} and image {image.shape[:2]} differ in size")
        classes = self.dataset_meta.get("classes") or ()
        table = self._palette_table(max(len(classes), int(seg.max()) + 1 if seg.size else 1))
        mask = seg != 255
        drawn = overlay(image, colorize(seg, table), self.alpha, mask=mask)
        if with_labels and classes:
            for cls in np.unique(seg[mask]):
                if cls >= len(classes):
                    continue
                ys, xs = np.nonzero(seg == cls)
                if len(ys) < 16:
                    continue
                y, x = int(np.median(ys)), int(np.median(xs))
                text = str(classes[cls])
                scale = max(0.3, min(image.shape[:2]) / 800)
                (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
                x0, y0 = max(0, min(x - tw // 2, image.shape[1] - tw)), max(th, y)
                cv2.rectangle(drawn, (x0, y0 - th - 2), (x0 + tw, y0 + 2), (0, 0, 0), -1)
                cv2.putText(drawn, text, (x0, y0), cv2.FONT_HERSHEY_SIMPLEX, scale,
                            tuple(int(v) for v in table[cls]), 1, cv2.LINE_AA)
        return drawn

    def add_datasample(self, name, image, data_sample=None, draw_gt=True, draw_pred=True,
                       show=False, wait_time=0, out_file=None, step=0, with_labels=True):
        """Draw and keep (``get_image``) the visualisation; write / show it as asked."""
        image = np.asarray(image, dtype=np.uint8)
        tiles = []
        if data_sample is not None:
            if draw_gt and "gt_sem_seg" in data_sample:
                tiles.append(self._draw_sem_seg(image, data_sample.gt_sem_seg, with_labels))
            if draw_pred and "pred_sem_seg" in data_sample:
                tiles.append(self._draw_sem_seg(image, data_sample.pred_sem_seg, with_labels))
        drawn = tiles[0] if len(tiles) == 1 else (np.concatenate(tiles, axis=1) if tiles else image)
        self._image = drawn
        if show:
            self._show(drawn, name, wait_time)
        if out_file is not None:
            from utils.visualize import save_rgb
            save_rgb(out_file, drawn)
        elif self.save_dir:
            from utils.visualize import save_rgb
            save_rgb(os.path.join(self.save_dir, "vis_data", "vis_image", f"{name or 'image'}_{step}.png"), drawn)
        return drawn

    @staticmethod
    def _show(image, name, wait_time):
        """Show the drawing in a matplotlib window; without a display (a non-interactive
        backend such as Agg) there is no window: one warning, the drawing is still returned."""
        try:
            import matplotlib
            import matplotlib.pyplot as plt
        except ImportError:
            warnings.warn("show=True needs matplotlib; the drawing is returned instead.", RuntimeWarning)
            return
        backend = matplotlib.get_backend().lower()
        if backend in _NON_INTERACTIVE:
            if not _NO_DISPLAY_WARNED:
                warnings.warn(f"show=True: no display (matplotlib backend {backend!r}); the "
                              "drawing is returned (and written with out_file) instead.",
                              RuntimeWarning)
                _NO_DISPLAY_WARNED.append(True)
            return
        plt.figure(name or "result")
        plt.imshow(image)
        plt.axis("off")
        if wait_time:
            plt.pause(wait_time)
        else:
            plt.show()
        plt.close()
