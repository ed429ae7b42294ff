"""Patient metadata: the shared site vocabulary, the encoding (missing is a value of its own), metadata
dropout, reading the fields from every layout that carries them, and the metadata model and checkpoint."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from conftest import class_image
from lesionlab.classes import CLASS_CODES
from lesionlab.data.metadata import (
    SITES,
    PatientMetadata,
    encode,
    field_widths,
    missing_encoding,
    parse_age,
    parse_sex,
    parse_site,
)
from lesionlab.data.readers import read_dataset
from lesionlab.errors import ConfigError, DataError
from lesionlab.models.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from lesionlab.models.metadata_model import MetadataDropout, MetadataSpec, model_metadata, with_metadata
from lesionlab.models.registry import IMAGENET_MEAN, IMAGENET_STD, build_model
from lesionlab.training.recipe import load_recipe

HAM_SITES = {
    "back": "posterior torso", "trunk": "torso (unspecified)", "abdomen": "anterior torso",
    "chest": "anterior torso", "face": "head/neck", "scalp": "head/neck", "ear": "head/neck",
    "neck": "head/neck", "upper extremity": "upper extremity", "lower extremity": "lower extremity",
    "hand": "upper extremity", "foot": "lower extremity", "acral": "palms/soles", "genital": "oral/genital",
}
ISIC_SITES = ("posterior torso", "anterior torso", "head/neck", "upper extremity", "lower extremity",
              "palms/soles", "oral/genital", "lateral torso")
FIELDS = ("age", "sex", "site")


@pytest.mark.parametrize(("name", "shared"), sorted(HAM_SITES.items()))
def test_every_ham10000_site_maps_onto_the_shared_vocabulary(name: str, shared: str) -> None:
    assert parse_site(name, "row") == shared


@pytest.mark.parametrize("name", ISIC_SITES)
def test_isic_sites_are_already_shared_names(name: str) -> None:
    assert parse_site(name.upper(), "row") == name
    assert name in SITES


@pytest.mark.parametrize("value", ["", "unknown", "  ", "NaN"])
def test_missing_values_are_none(value: str) -> None:
    assert parse_site(value, "row") is None
    assert parse_sex(value, "row") is None
    assert parse_age(value, "row") is None


def test_bad_values_are_errors_that_name_the_row() -> None:
    with pytest.raises(DataError, match=r"row 7.*elbow"):
        parse_site("elbow", "row 7")
    with pytest.raises(DataError, match=r"row 7.*sex 'x'"):
        parse_sex("x", "row 7")
    with pytest.raises(DataError, match=r"row 7.*not a number"):
        parse_age("old", "row 7")
    with pytest.raises(DataError, match="outside"):
        parse_age("250", "row 7")


def test_encoding_gives_missing_its_own_slot() -> None:
    full = encode(PatientMetadata(age=50.0, sex="male", site="head/neck"), FIELDS)
    empty = missing_encoding(FIELDS)
    assert len(full) == len(empty) == sum(field_widths(FIELDS)) == 2 + 3 + len(SITES) + 1
    assert full[:2].tolist() == [0.5, 0.0]
    assert empty[:2].tolist() == [0.0, 1.0]
    assert full[2:5].tolist() == [0.0, 1.0, 0.0]
    assert empty[2:5].tolist() == [0.0, 0.0, 1.0]
    assert full[5:].argmax().item() == SITES.index("head/neck")
    assert empty[5:].argmax().item() == len(SITES)
    assert torch.equal(encode(None, FIELDS), empty)
    assert encode(PatientMetadata(sex="female"), ("sex",)).tolist() == [1.0, 0.0, 0.0]


def test_metadata_dropout_withholds_each_field_independently_in_training_only() -> None:
    torch.manual_seed(0)
    rows = encode(PatientMetadata(age=40.0, sex="female", site="posterior torso"), FIELDS).repeat(4000, 1)
    dropout = MetadataDropout(FIELDS, 0.3)
    assert torch.equal(dropout.eval()(rows), rows)
    dropped = dropout.train()(rows)
    missing = missing_encoding(FIELDS)
    slices = [(0, 2), (2, 5), (5, 5 + len(SITES) + 1)]
    withheld = torch.stack([(dropped[:, a:b] == missing[a:b]).all(dim=1) for a, b in slices], dim=1).float()
    kept = torch.stack([(dropped[:, a:b] == rows[:, a:b]).all(dim=1) for a, b in slices], dim=1).float()
    assert torch.equal(withheld + kept, torch.ones_like(withheld))
    assert ((withheld.mean(dim=0) - 0.3).abs() < 0.03).all()
    both = (withheld[:, 0] * withheld[:, 2]).mean().item()
    assert abs(both - 0.09) < 0.02
    assert torch.equal(MetadataDropout(FIELDS, 1.0).train()(rows), missing.expand_as(rows))


def test_ham10000_layout_carries_the_fields(tiny_ham_dataset: Callable[..., Path]) -> None:
    table = read_dataset(tiny_ham_dataset(images_per_class=2))
    assert {sample.metadata for sample in table.samples} == {
        PatientMetadata(age=50.0, sex="female", site="posterior torso")}


def _isic_folder(root: Path, columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> Path:
    ground_truth = root / "ISIC2018_Task3_Validation_GroundTruth.csv"
    with ground_truth.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(("image", *(code.upper() for code in CLASS_CODES)))
        for index in range(len(rows)):
            writer.writerow((f"ISIC_{index}", *(1.0 if label == index % 7 else 0.0 for label in range(7))))
    generator = torch.Generator().manual_seed(0)
    import numpy as np

    rng = np.random.default_rng(int(torch.randint(100, (1,), generator=generator)))
    for index in range(len(rows)):
        class_image(index % 7, rng).save(root / f"ISIC_{index}.jpg")
    with (root / "ISIC2018_Task3_Validation_metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return ground_truth


def test_isic_layout_reads_isic_style_metadata_with_missing_fields(tmp_path: Path) -> None:
    columns = ("image_id", "lesion_id", "age_approx", "sex", "anatom_site_general")
    rows = [("ISIC_0", "IL_0", "45", "male", "posterior torso"), ("ISIC_1", "IL_1", "", "", ""),
            ("ISIC_2", "IL_2", "70", "female", "palms/soles")]
    table = read_dataset(_isic_folder(tmp_path, columns, rows))
    by_id = {sample.image_id: sample for sample in table.samples}
    assert by_id["ISIC_0"].metadata == PatientMetadata(45.0, "male", "posterior torso")
    assert by_id["ISIC_1"].metadata == PatientMetadata()
    assert by_id["ISIC_2"].metadata == PatientMetadata(70.0, "female", "palms/soles")
    assert by_id["ISIC_0"].lesion_id == "IL_0"


def test_layouts_without_metadata_carry_none(tmp_path: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for label in range(7):
        class_image(label, rng).save(tmp_path / f"{label + 1}_img{label}.png")
    assert all(sample.metadata is None for sample in read_dataset(tmp_path).samples)


def test_real_isic_2018_validation_metadata(shared_data_dir: Path) -> None:
    table = read_dataset(shared_data_dir / "ISIC2018_Task3_Validation_GroundTruth.csv")
    assert len(table) == 193
    assert sum(sample.metadata.site is None for sample in table.samples) == 40
    assert {sample.metadata.site for sample in table.samples} <= {*SITES, None}
    ham = read_dataset(shared_data_dir)
    assert sum(sample.metadata.site is None for sample in ham.samples) == 234
    assert sum(sample.metadata.sex is None for sample in ham.samples) == 57


def _tiny_metadata_model() -> torch.nn.Module:
    torch.manual_seed(0)
    spec = MetadataSpec(FIELDS, 0.3, 8)
    return with_metadata(build_model("mobilenet_v3_small", pretrained="none"), spec)


def test_wrapped_model_starts_as_the_image_model_and_reads_fields_once_trained() -> None:
    torch.manual_seed(0)
    base = build_model("mobilenet_v3_small", pretrained="none").eval()
    model = with_metadata(base, MetadataSpec(FIELDS, 0.3, 8)).eval()
    images = torch.randn(2, 3, 64, 64)
    fields = torch.stack([encode(PatientMetadata(30.0, "male", "head/neck"), FIELDS)] * 2)
    with torch.no_grad():
        image_only = base(images)
        assert torch.allclose(model(images), image_only, atol=1e-5)
        assert torch.allclose(model(images, fields), image_only, atol=1e-5)
        model.classifier.head[0].weight[:, -8:].fill_(0.1)
        assert not torch.allclose(model((images, fields)), model(images), atol=1e-4)
        assert torch.equal(model(images), model(images, missing_encoding(FIELDS).expand(2, -1)))
    with pytest.raises(ConfigError, match="reads age, sex, site"):
        model(images, fields[:, :3])


def test_checkpoint_round_trip_keeps_the_branch_and_the_card_names_the_fields(tmp_path: Path) -> None:
    model = _tiny_metadata_model().eval()
    with torch.no_grad():
        model.classifier.head[0].weight[:, -8:].normal_()
    card = ModelCard(arch="mobilenet_v3_small", num_classes=7, classes=list(CLASS_CODES), input_size=64,
                     mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD), grayscale=False, head_hidden=1024,
                     dropout=0.2, stage=1, epoch=1, metadata=model_metadata(model).to_dict())
    save_checkpoint(tmp_path / "best", model, card)
    loaded, loaded_card = load_checkpoint(tmp_path / "best")
    assert loaded_card.metadata == {"fields": list(FIELDS), "dropout": 0.3, "hidden": 8}
    images = torch.randn(2, 3, 64, 64)
    fields = torch.stack([encode(PatientMetadata(60.0, "female", "lower extremity"), FIELDS)] * 2)
    with torch.no_grad():
        assert torch.equal(loaded(images, fields), model(images, fields))


def test_recipe_metadata_key() -> None:
    assert load_recipe().metadata is None
    recipe = load_recipe("metadata")
    assert recipe.metadata is not None and recipe.metadata.fields == list(FIELDS)
    with pytest.raises(ConfigError, match=r"metadata.fields"):
        load_recipe("metadata", ["metadata.fields=[age, weight]"])
    with pytest.raises(ConfigError, match=r"metadata.dropout"):
        load_recipe("metadata", ["metadata.dropout=1.5"])
    with pytest.raises(ConfigError, match="cannot be distilled"):
        load_recipe("metadata", ["teacher=runs/x"])


def test_metadata_csv_for_many_images(tmp_path: Path) -> None:
    from lesionlab.data.metadata import read_metadata_csv

    table = tmp_path / "fields.csv"
    table.write_text("image,age_approx,sex,anatom_site_general\na.jpg,35,male,head/neck\n/x/b.jpg,,,\n")
    assert read_metadata_csv(table) == {tmp_path / "a.jpg": PatientMetadata(35.0, "male", "head/neck"),
                                        Path("/x/b.jpg"): PatientMetadata()}
    (tmp_path / "bad.csv").write_text("file,age\na.jpg,3\n")
    with pytest.raises(DataError, match="no 'image' column"):
        read_metadata_csv(tmp_path / "bad.csv")
