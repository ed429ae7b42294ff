"""Does the Grad-CAM peak lie on the lesion? The share over a run's test images, flip-equivariance, a grid.

For each of `--sample` test images (seed 0) the model's predicted class is explained with Grad-CAM at the
model's input size, on the image as the network sees it (squashed to a square). The lesion is found without
the model: Otsu's threshold on a lesion score (darkness plus saturation: lesions are darker and more
coloured than the skin around them), computed inside the disc inscribed in the square so the dark vignette
corners of dermoscopy photos are left out, then the largest connected component. A map "hits" when its peak
pixel lies inside that mask; "within one cell" also accepts a peak one last-block grid cell (about 32 px: a
seventh of the side at 224 px, an eighth at 225) from the mask, the map's own resolution. Flip-equivariance:
the correlation of the map of the mirrored image with the mirrored map (1 for a map that moves with the
image). The mirror-averaged map (the identity and mirrored views, each turned back) is what `--tta` draws,
over more views.

    nice -n 19 .venv/bin/python scripts/gradcam_lesion.py runs/default --sample 100 \
        --grid docs/figures/gradcam-lesion-grid.png
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from lesionlab.data.imageio import load_resized_array
from lesionlab.data.preprocess_np import preprocess_array
from lesionlab.explain import class_heatmaps
from lesionlab.explain_checks import map_correlation
from lesionlab.inference.run_samples import split_samples
from lesionlab.inference.torch_backend import TorchPredictor

NETWORK_STRIDE = 32
"""MobileNetV3 halves the input five times: its last feature block has ceil(size / 32) cells per side, the
map's real resolution (7 at 224 px, 8 at 225)."""


def lesion_mask(rgb: np.ndarray) -> np.ndarray:
    """A boolean lesion mask of a square uint8 RGB image: Otsu on darkness + saturation inside the inscribed
    disc (vignette corners excluded), the largest component kept, holes filled."""
    size = rgb.shape[0]
    hsv = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV).astype(np.float32)
    score = (255.0 - hsv[..., 2]) + hsv[..., 1]
    score = cv2.GaussianBlur(score, (0, 0), size / 64)
    yy, xx = np.mgrid[:size, :size]
    disc = (xx - (size - 1) / 2) ** 2 + (yy - (size - 1) / 2) ** 2 <= (0.48 * size) ** 2
    inside = score[disc]
    scaled = np.clip((score - inside.min()) / max(float(np.ptp(inside)), 1e-6) * 255, 0, 255).astype(np.uint8)
    threshold, _ = cv2.threshold(scaled[disc].reshape(-1, 1), 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    raw = ((scaled > threshold) & disc).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(raw, connectivity=8)
    if count <= 1:
        return np.zeros_like(disc)
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    component = (labels == largest).astype(np.uint8)
    contours, _ = cv2.findContours(component, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(component)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled.astype(bool)


def peak(heatmap: np.ndarray) -> tuple[int, int]:
    """Row and column of the map's maximum."""
    row, column = np.unravel_index(int(np.argmax(heatmap)), heatmap.shape)
    return int(row), int(column)


def measure(model, predictor: TorchPredictor, path: Path, size: int) -> dict:
    """Mask, maps (plain, of the mirror image, mirror-averaged) and their hits for one image."""
    rgb = load_resized_array(path, size)
    batch = preprocess_array(rgb, size)
    probabilities = predictor.predict_batch(batch)[0]
    class_index = int(np.argmax(probabilities))
    maps = class_heatmaps(model, predictor.card.arch, np.concatenate([batch, batch[..., ::-1].copy()]),
                          class_index)
    plain, mirrored = maps[0], maps[1]
    averaged = (plain + mirrored[:, ::-1]) / 2
    mask = lesion_mask(rgb)
    cell = size // -(-size // NETWORK_STRIDE)
    near = cv2.dilate(mask.astype(np.uint8), np.ones((2 * cell + 1, 2 * cell + 1), np.uint8)).astype(bool)
    return {"image": path.stem, "class": predictor.classes[class_index], "rgb": rgb, "mask": mask,
            "plain": plain, "averaged": averaged, "mask_share": float(mask.mean()),
            "hit": bool(mask[peak(plain)]), "near": bool(near[peak(plain)]),
            "hit_averaged": bool(mask[peak(averaged)]), "near_averaged": bool(near[peak(averaged)]),
            "follows": map_correlation(mirrored, plain[:, ::-1]), "stays": map_correlation(mirrored, plain)}


def draw_grid(rows: list[dict], path: Path, columns: int = 6) -> None:
    """Examples: the image with the lesion outline (white), the map over it and its peak (cross)."""
    count = len(rows)
    lines = (count + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(columns * 1.5, lines * 1.65), dpi=72)
    for axis, row in zip(np.ravel(axes), rows, strict=False):
        axis.imshow(row["rgb"])
        axis.imshow(row["plain"], cmap="jet", alpha=0.4, vmin=0, vmax=1)
        axis.contour(row["mask"], levels=[0.5], colors="white", linewidths=0.8)
        y, x = peak(row["plain"])
        axis.plot(x, y, marker="x", color="black", markersize=7, markeredgewidth=2)
        axis.set_title(f"{row['class']} {'hit' if row['hit'] else 'miss'}", fontsize=7)
    for axis in np.ravel(axes):
        axis.set_axis_off()
    figure.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=72)
    plt.close(figure)
    shrink_png(path)


def shrink_png(path: Path, colours: int = 128) -> None:
    """Rewrite a PNG with an adaptive palette: a third of the bytes, small enough for the docs."""
    with Image.open(path) as image:
        palette = image.convert("RGB").quantize(colors=colours)
    palette.save(path, optimize=True)


def main() -> None:
    """Measure, print the shares, and draw the grid of the first examples."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--sample", type=int, default=100, help="test images (seed 0)")
    parser.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="input side (default: the model's); an odd one (225) makes every stride-2 layer "
                        "sample the image symmetrically")
    parser.add_argument("--grid", type=Path, default=None, help="write a PNG grid of the first 18 examples")
    args = parser.parse_args()

    predictor = TorchPredictor.from_path(args.run)
    size = args.input_size or predictor.preprocessing.input_size
    model = copy.deepcopy(predictor.pixel_model).requires_grad_(True)
    samples = split_samples(args.run, "test", args.data, args.sample)
    rows = [measure(model, predictor, Path(sample.path), size) for sample in samples]
    count = len(rows)

    def share(key: str) -> str:
        hits = sum(row[key] for row in rows)
        return f"{hits}/{count} ({hits / count:.0%})"

    print(f"run {args.run}: {count} test images (seed 0), Grad-CAM of the predicted class at {size} px")
    print(f"lesion mask: mean {np.mean([row['mask_share'] for row in rows]):.0%} of the square")
    print(f"peak inside the lesion, plain map:           {share('hit')}; within one cell: {share('near')}")
    print(f"peak inside the lesion, mirror-averaged map: {share('hit_averaged')}; within one cell: "
          f"{share('near_averaged')}")
    by_class = {code: [row for row in rows if row["class"] == code] for code in predictor.classes}
    shares = [f"{code} {sum(row['hit'] for row in group)}/{len(group)}"
              for code, group in by_class.items() if group]
    print(f"peak inside the lesion (plain map) by predicted class: {', '.join(shares)}")
    follows = [row["follows"] for row in rows]
    stays = [row["stays"] for row in rows]
    print(f"mirror follows (map of the mirrored image vs the mirrored map): median {np.median(follows):.2f}, "
          f"mean {np.mean(follows):.2f}; mirror stays: median {np.median(stays):.2f}")
    if args.grid is not None:
        draw_grid(rows[:18], args.grid)
        print(f"grid: {args.grid} ({args.grid.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
