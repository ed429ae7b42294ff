"""A patient's optional age, sex and anatomical site on the API, for models trained with metadata.

Each field comes as a multipart form field beside the image (what the page sends) or as a query parameter
(`POST /predict?age=55&site=back`), and is parsed by `lesionlab.data.metadata`, the parser `predict` and
the dataset readers use: HAM10000 and ISIC site names map onto the shared vocabulary, an empty value is
missing, and a bad value is a 422 naming the field (an unknown site lists every accepted name). Every answer
then says which fields the model used, which it read as missing, and which it ignored, so a field sent to an
image-only model is visibly ignored rather than silently believed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

from fastapi import Form, HTTPException, Query

from lesionlab.data.metadata import PatientMetadata, fields_given, parse_patient
from lesionlab.errors import DataError
from lesionlab.serve.schemas import MetadataOut

INVALID_FIELD_STATUS = 422
AGE_HELP = "patient age in years (0-120); for a model trained with metadata, optional"
SEX_HELP = "female or male; optional"
SITE_HELP = ("anatomical site, HAM10000 or ISIC names (back, face, trunk, posterior torso, head/neck, ...); "
             "optional")


def _one_value(name: str, form: str | None, query: str | None) -> str | None:
    """The field from the form or the query; both at once is a 422, so two values cannot disagree."""
    if form is not None and query is not None:
        raise HTTPException(status_code=INVALID_FIELD_STATUS,
                            detail=f"{name} given both as a form field and in the query; give it once")
    return form if form is not None else query


def patient_fields(
    age: Annotated[str | None, Form(description=AGE_HELP)] = None,
    sex: Annotated[str | None, Form(description=SEX_HELP)] = None,
    site: Annotated[str | None, Form(description=SITE_HELP)] = None,
    age_in_query: Annotated[str | None, Query(alias="age", description=AGE_HELP)] = None,
    sex_in_query: Annotated[str | None, Query(alias="sex", description=SEX_HELP)] = None,
    site_in_query: Annotated[str | None, Query(alias="site", description=SITE_HELP)] = None,
) -> PatientMetadata:
    """The request's patient fields in the shared vocabulary (a FastAPI dependency); each is validated even
    where the model does not read it, so a request means the same on every model."""
    try:
        return parse_patient(_one_value("age", age, age_in_query), _one_value("sex", sex, sex_in_query),
                             _one_value("site", site, site_in_query))
    except DataError as error:
        raise HTTPException(status_code=INVALID_FIELD_STATUS, detail=str(error)) from None


def read_fields(record: PatientMetadata, model_fields: Sequence[str]) -> tuple[PatientMetadata | None,
                                                                               MetadataOut]:
    """What to hand the predictor (None: nothing the model reads was given, so it sees the image alone or
    every field missing, which score the same) and the answer's account of the fields."""
    given = fields_given(record)
    used = {name: value for name, value in given.items() if name in model_fields}
    missing = [name for name in model_fields if name not in used]
    ignored = [name for name in given if name not in model_fields]
    if not model_fields:
        note = "this model reads the image only"
    else:
        note = f"used: {', '.join(used) or 'none'}"
        if missing:
            note += f"; not given, read as missing: {', '.join(missing)}"
    if ignored:
        note += f"; ignored (this model does not read them): {', '.join(ignored)}"
    return (record if used else None), MetadataOut(reads=list(model_fields), used=used, missing=missing,
                                                   ignored=ignored, note=note)
