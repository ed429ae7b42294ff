"""Sanity checks of a run's Grad-CAM maps on real images: do they follow the lesion, and the learned weights?

    nice -n 19 .venv/bin/python scripts/check_explanations.py RUN [--images ISIC_0024326 ISIC_0024313]
        [--sample 40] [--data ../shared/data/ham10000]

Prints, per named image and as means over a seeded sample of the run's test part:
- the class explained, its probability and where the map peaks (x, y as fractions from the top-left);
- mirror check (plain Grad-CAM, and averaged over the identity and mirrored views as `--tta` does): the
  correlation of the mirrored image's map with the mirrored map ("follows") and with the unmirrored map
  ("stays");
- Adebayo et al.'s randomisation check: correlation of the trained model's map with a re-initialised one's,
  and the mirror check of the re-initialised model (a map that stays put without any learned weight comes
  from the architecture, not from what the model learned);
- occlusion: the fall in the explained probability when a corner or the centre is greyed out;
- how alike maps of different images are (correlation with the sample's mean map): near 1 means the map
  shows a fixed position, not the image.

`--input-size N` feeds the network N x N inputs instead of its training size (it has global pooling, so any
size runs): with an odd size whose halvings stay odd (129, 193, 257), every stride-2 layer samples the image
symmetrically, which isolates the part of the mirror behaviour due to the sampling grid.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

from lesionlab.data.imageio import load_rgb
from lesionlab.data.preprocess_np import preprocess_array
from lesionlab.data.readers import read_dataset
from lesionlab.data.readers.locate import resolve_data_path
from lesionlab.evaluation.report import Table, format_table
from lesionlab.explain import view_averaged_heatmap
from lesionlab.explain_checks import (
    flip_check,
    hot_spot,
    map_correlation,
    occlusion_drops,
    randomised_copy,
)
from lesionlab.inference.run_samples import split_samples
from lesionlab.inference.torch_backend import TorchPredictor

REPORTED_IMAGES = ("ISIC_0024326", "ISIC_0024313")
MIRROR_VIEWS = ("identity", "hflip")
REGIONS = ("top-left", "top-right", "bottom-left", "bottom-right", "centre")


def measure(model, random_model, predictor: TorchPredictor, path: Path, size: int) -> dict[str, float | str]:
    """Every check on one image at `size` x `size`, for the class the model predicts."""
    arch = predictor.card.arch
    batch = preprocess_array(np.asarray(load_rgb(path)), size)
    probabilities = predictor.predict_batch(batch)[0]
    class_index = int(np.argmax(probabilities))
    heatmap = view_averaged_heatmap(model, arch, batch, class_index)
    plain = flip_check(model, arch, batch, class_index)
    averaged = flip_check(model, arch, batch, class_index, MIRROR_VIEWS)
    random_map = view_averaged_heatmap(random_model, arch, batch, class_index)
    random_flip = flip_check(random_model, arch, batch, class_index)
    drops = occlusion_drops(predictor.predict_batch, batch, class_index)
    x, y = hot_spot(heatmap)
    return {"image": path.stem, "class": predictor.classes[class_index],
            "p": float(probabilities[class_index]), "x": x, "y": y,
            "follows": plain.follows, "stays": plain.stays,
            "tta_follows": averaged.follows, "tta_stays": averaged.stays,
            "random": map_correlation(heatmap, random_map), "random_follows": random_flip.follows,
            "random_stays": random_flip.stays, "heatmap": heatmap,
            **{f"drop {region}": drops[region] for region in REGIONS}}


def table(rows: list[dict]) -> str:
    """The measurements as an aligned table."""
    headers = ("image", "class", "p", "peak x,y", "mirror follows", "mirror stays", "TTA follows",
               "TTA stays", "vs random", "random follows", "random stays", *(f"drop {r}" for r in REGIONS))
    cells = tuple(
        (row["image"], row["class"], f"{row['p']:.3f}", f"{row['x']:.2f},{row['y']:.2f}",
         *(f"{row[key]:.2f}" for key in ("follows", "stays", "tta_follows", "tta_stays", "random",
                                         "random_follows", "random_stays")),
         *(f"{row[f'drop {r}']:+.3f}" for r in REGIONS))
        for row in rows
    )
    return format_table(Table(headers, cells, numeric_from=2))


def main() -> None:
    """Measure the named images and a sample of the run's test part; print the tables."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--images", nargs="*", default=list(REPORTED_IMAGES), help="image ids to measure")
    parser.add_argument("--sample", type=int, default=40, help="test images for the means (seed 0)")
    parser.add_argument("--data", default=None, help="dataset folder (default: the run's)")
    parser.add_argument("--input-size", type=int, default=None, help="input side (default: the model's)")
    args = parser.parse_args()

    predictor = TorchPredictor.from_path(args.run)
    size = args.input_size or predictor.preprocessing.input_size
    model = copy.deepcopy(predictor.pixel_model).requires_grad_(True)
    random_model = randomised_copy(model).requires_grad_(True)
    root = resolve_data_path(args.data or None)
    by_id = {sample.image_id: Path(sample.path) for sample in read_dataset(root).samples}
    named = [measure(model, random_model, predictor, by_id[image_id], size) for image_id in args.images]
    print(f"run {args.run} ({predictor.card.arch}, trained at {predictor.preprocessing.input_size} px, "
          f"measured at {size} px)\n")
    print(table(named))
    if args.sample:
        samples = split_samples(args.run, "test", args.data, args.sample)
        sampled = [measure(model, random_model, predictor, Path(sample.path), size) for sample in samples]
        mean_map = np.mean([row["heatmap"] for row in sampled], axis=0)
        keys = ("p", "x", "y", "follows", "stays", "tta_follows", "tta_stays", "random", "random_follows",
                "random_stays",
                *(f"drop {r}" for r in REGIONS))
        mean_row = {"image": f"mean of {len(sampled)} test images", "class": "-",
                    **{key: float(np.mean([row[key] for row in sampled])) for key in keys}}
        print("\n" + table([mean_row]))
        likeness = [map_correlation(row["heatmap"], mean_map) for row in sampled]
        corner = sum(min(row["x"], 1 - row["x"]) < 0.25 and min(row["y"], 1 - row["y"]) < 0.25
                     for row in sampled)
        mean_x, mean_y = hot_spot(mean_map)
        print(f"\nmaps vs the sample's mean map: mean correlation {np.mean(likeness):.2f}; mean map peaks at "
              f"{mean_x:.2f},{mean_y:.2f}; {corner} of {len(sampled)} maps peak in a corner square "
              f"(a quarter of the side)")


if __name__ == "__main__":
    main()
