"""Draw docs/images/gradcam-example.png: ``.venv/bin/python docs/make_gradcam_example.py``.

Two positives explained by a small CNN trained on slices where a bright disc decides the
class (as tests/test_gradcam.py trains it), and the untrained default on the first slice.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.gradcam import GradCam  # noqa: E402
from models.heatmap_image import render  # noqa: E402
from models.loader import build_untrained, load_model_file  # noqa: E402
from models.synthetic import blob_slices, save_blob_model  # noqa: E402


def main() -> None:
    images, labels, _ = blob_slices(320, seed=0)
    with tempfile.TemporaryDirectory() as folder:
        trained = load_model_file(save_blob_model(Path(folder) / "blob.h5", images, labels))
    test, test_labels, _ = blob_slices(8, seed=2000)
    positives = test[test_labels == 1][:2]
    pictures = [
        render(t, h.cam).overlay_png
        for t, h in zip(positives, GradCam(trained, 2).explain(positives))
    ]
    untrained = build_untrained((64, 64))
    (heatmap,) = GradCam(untrained, 1).explain(positives[:1])
    pictures.append(render(positives[0], heatmap.cam, "UNTRAINED MODEL: means nothing").overlay_png)
    tiles = [Image.open(io.BytesIO(p)).convert("RGB") for p in pictures]
    gap = 12
    sheet = Image.new(
        "RGB",
        (sum(t.width for t in tiles) + gap * (len(tiles) - 1), max(t.height for t in tiles)),
        "white",
    )
    x = 0
    for tile in tiles:
        sheet.paste(tile, (x, 0))
        x += tile.width + gap
    sheet.save(ROOT / "docs" / "images" / "gradcam-example.png", optimize=True)
    print(np.asarray(sheet).shape)


if __name__ == "__main__":
    main()
