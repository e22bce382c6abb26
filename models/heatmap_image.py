"""Pictures of a Grad-CAM map: the overlay with a legend, the coloured map, the slice, the array.

Colours come from viridis, a perceptually uniform colormap (equal steps in the map look
like equal steps in colour, and it reads in greyscale and to colour-blind readers), taken
from matplotlib. Every picture is at the size the model saw the slice (``seed-v1``: the
resized slice), so the map lines up with what the model was given, not with the upload.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

import numpy as np

COLORMAP = "viridis"
OVERLAY_ALPHA = 0.45
MIN_OVERLAY_SIDE = 256  # small model inputs are scaled up so the legend stays readable
LEGEND_WIDTH = 64


@dataclass(frozen=True)
class HeatmapImages:
    """What is stored for one explanation (PNG bytes, and the map as ``.npy`` bytes)."""

    overlay_png: bytes
    heatmap_png: bytes
    slice_png: bytes
    map_npy: bytes


@lru_cache(maxsize=1)
def colormap_lut(name: str = COLORMAP) -> np.ndarray:
    """A ``(256, 3)`` uint8 RGB table of the colormap."""
    from matplotlib import colormaps

    return (colormaps[name](np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def colourise(cam: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to ``(H, W, 3)`` uint8 RGB."""
    index = np.clip(np.nan_to_num(cam) * 255.0, 0, 255).round().astype(np.uint8)
    return colormap_lut()[index]


def _png(rgb: np.ndarray) -> bytes:
    from models.preprocess import _cv2

    cv2 = _cv2()
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode a PNG")
    return encoded.tobytes()


def _text(
    image: np.ndarray,
    text: str,
    origin: tuple[int, int],
    scale: float = 0.4,
    colour: tuple[int, int, int] = (20, 20, 20),
) -> None:
    from models.preprocess import _cv2

    cv2 = _cv2()
    cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _legend(height: int) -> np.ndarray:
    """A white strip with the colour bar (high at the top) and its labels."""
    strip = np.full((height, LEGEND_WIDTH, 3), 255, dtype=np.uint8)
    top, bottom = 22, height - 22
    values = np.linspace(1.0, 0.0, max(2, bottom - top))[:, None]
    strip[top:bottom, 8:24] = colourise(np.repeat(values, 16, axis=1))
    _text(strip, "1.0", (28, top + 8))
    _text(strip, "0.5", (28, (top + bottom) // 2 + 4))
    _text(strip, "0.0", (28, bottom))
    _text(strip, "Grad-CAM", (2, 14), 0.35)
    _text(strip, "relative", (2, height - 6), 0.35)
    return strip


def overlay(slice_rgb: np.ndarray, cam: np.ndarray, note: Optional[str] = None) -> np.ndarray:
    """The slice with the map blended over it, scaled up when small, a legend on the right."""
    from models.preprocess import _cv2

    cv2 = _cv2()
    blended = ((1 - OVERLAY_ALPHA) * slice_rgb + OVERLAY_ALPHA * colourise(cam)).astype(np.uint8)
    height, width = blended.shape[:2]
    scale = max(1, -(-MIN_OVERLAY_SIDE // max(height, width)))
    if scale > 1:
        blended = cv2.resize(
            blended, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST
        )
    picture = np.ascontiguousarray(np.concatenate([blended, _legend(blended.shape[0])], axis=1))
    if note:
        cv2.rectangle(picture, (0, 0), (blended.shape[1] - 1, 16), (255, 255, 255), -1)
        _text(picture, note, (4, 12), 0.4, (180, 0, 0))
    return picture


def render(tensor: np.ndarray, cam: np.ndarray, note: Optional[str] = None) -> HeatmapImages:
    """Every picture of one explanation.

    Args:
        tensor: the slice as the model saw it, ``(H, W, 3)`` float in [0, 1].
        cam: the normalised map, ``(H, W)`` in [0, 1].
        note: a warning written across the overlay's top (e.g. an untrained model).
    """
    slice_rgb = np.clip(np.asarray(tensor) * 255.0, 0, 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(cam, dtype=np.float16), allow_pickle=False)
    return HeatmapImages(
        overlay_png=_png(overlay(slice_rgb, cam, note)),
        heatmap_png=_png(colourise(cam)),
        slice_png=_png(slice_rgb),
        map_npy=buffer.getvalue(),
    )
