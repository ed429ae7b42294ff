"""The seven HAM10000 diagnostic classes and the one label order every part of lesionlab uses.

Label indices 0..6 follow the reference system (alphabetical codes), so confusion matrices, checkpoints and
reports from every command line up without a mapping step.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LesionClass:
    """One diagnostic class: its code, a readable name, and whether it is malignant."""

    index: int
    code: str
    name: str
    malignant: bool
    description: str


CLASSES: tuple[LesionClass, ...] = (
    LesionClass(0, "akiec", "Actinic keratosis / intraepithelial carcinoma", True,
                "Actinic keratoses and intraepithelial carcinoma (Bowen's disease): in situ."),
    LesionClass(1, "bcc", "Basal cell carcinoma", True, "The most common skin cancer; rarely metastasises."),
    LesionClass(2, "bkl", "Benign keratosis-like lesion", False,
                "Solar lentigines, seborrhoeic keratoses and lichen-planus-like keratoses."),
    LesionClass(3, "df", "Dermatofibroma", False, "A benign fibrous skin lesion."),
    LesionClass(4, "mel", "Melanoma", True, "A malignant neoplasm of melanocytes."),
    LesionClass(5, "nv", "Melanocytic nevus", False, "A benign neoplasm of melanocytes (a mole)."),
    LesionClass(6, "vasc", "Vascular lesion", False,
                "Angiomas, angiokeratomas, pyogenic granulomas and haemorrhage."),
)

CLASS_CODES: tuple[str, ...] = tuple(c.code for c in CLASSES)
NUM_CLASSES = len(CLASSES)
MALIGNANT_CODES: frozenset[str] = frozenset(c.code for c in CLASSES if c.malignant)
_INDEX_BY_CODE = {c.code: c.index for c in CLASSES}


def class_index(code: str) -> int:
    """Return the label index of a class code, case-insensitively; raise KeyError for an unknown code."""
    return _INDEX_BY_CODE[code.strip().lower()]


def is_known_code(code: str) -> bool:
    """Tell whether a string names one of the seven classes (case-insensitive)."""
    return code.strip().lower() in _INDEX_BY_CODE
