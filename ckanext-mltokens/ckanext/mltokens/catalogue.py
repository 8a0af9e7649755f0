"""Models are datasets: which CKAN dataset describes which model API (docs/models-in-the-catalogue.md).

A dataset is a model API entry when it has the field `model_id`, the model id the gateway
routes on (`/v1/models/{model_id}/...`), and `model_operations`, the operations it offers
(comma-separated, e.g. `predict, train`): the roles `model:<model_id>:<operation>` reach it.
Both are plain dataset extras, so any CKAN site can set them through the form's custom
fields or the API; with ckanext-scheming, declare them as fields of the dataset schema
(scheming stores them as extras too, and shows them as top-level keys: both are read here).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MODEL_ID = "model_id"
MODEL_OPERATIONS = "model_operations"
# One path segment of the gateway's route policy ({model}: letters, digits, ".", "_", "-"),
# not "." or "..", which a URL resolves away.
_MODEL_ID = re.compile(r"(?!\.{1,2}$)[A-Za-z0-9._-]{1,100}")
_OPERATION = re.compile(r"[a-z][a-z0-9_-]{0,39}")
MAX_OPERATIONS = 20


@dataclass(frozen=True)
class ModelApi:
    """The model API a dataset describes."""

    model_id: str
    operations: tuple[str, ...]

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(f"model:{self.model_id}:{operation}" for operation in self.operations)


def _fields(pkg_dict: dict[str, Any]) -> dict[str, Any]:
    """The two fields, top-level (ckanext-scheming, or a form that sent them so) or as extras."""
    extras = pkg_dict.get("extras")
    found = {
        extra.get("key"): extra.get("value")
        for extra in (extras if isinstance(extras, list) else ())  # not a list: CKAN's schema refuses it
        if isinstance(extra, dict) and extra.get("key") in (MODEL_ID, MODEL_OPERATIONS)
    }
    found.update({key: pkg_dict[key] for key in (MODEL_ID, MODEL_OPERATIONS) if key in pkg_dict})
    return found


def _operations(value: Any) -> list[str]:
    items = value if isinstance(value, list) else str(value or "").split(",")
    return [str(item).strip() for item in items if str(item).strip()]


def errors(pkg_dict: dict[str, Any]) -> dict[str, list[str]]:
    """Field errors of a dataset's model fields ({} when valid or absent)."""
    fields = _fields(pkg_dict)
    model_id, operations = fields.get(MODEL_ID), fields.get(MODEL_OPERATIONS)
    found: dict[str, list[str]] = {}
    if model_id in (None, "") and operations in (None, "", []):
        return found
    if not isinstance(model_id, str) or not _MODEL_ID.fullmatch(model_id):
        found[MODEL_ID] = [
            "A model id is 1 to 100 letters, digits, '.', '_' or '-' (the model's path segment "
            "in /v1/models/<model id>/...)."
        ]
    names = _operations(operations)
    if not names:
        found[MODEL_OPERATIONS] = ["Name the model's operations, comma-separated (e.g. predict, train)."]
    elif len(names) > MAX_OPERATIONS or not all(_OPERATION.fullmatch(name) for name in names):
        found[MODEL_OPERATIONS] = [
            f"At most {MAX_OPERATIONS} operations, each a lowercase letter then up to 39 "
            "lowercase letters, digits, '_' or '-'."
        ]
    return found


def model_api(pkg_dict: dict[str, Any]) -> ModelApi | None:
    """The model API a dataset describes, or None (no model fields, or invalid ones)."""
    if errors(pkg_dict) or not (fields := _fields(pkg_dict)).get(MODEL_ID):
        return None
    return ModelApi(fields[MODEL_ID], tuple(dict.fromkeys(_operations(fields[MODEL_OPERATIONS]))))


def gateway_base(model_api_url: str) -> str:
    """The gateway address before `/v1/models/`, from the configured example endpoint ("" if it has none)."""
    head, found, _tail = model_api_url.partition("/v1/models/")
    return head if found else ""
