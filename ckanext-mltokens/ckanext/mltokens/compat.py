"""What differs between the CKAN releases the plugin supports (2.11 and 2.12), in one place.

Each difference names the release and what changed. Code elsewhere in the plugin calls
these and never asks which CKAN it runs in.

Differences that need no code of their own:

- CSRF. CKAN 2.11 exempts every plugin's views from its CSRF check by default
  (`ckan.csrf_protection.ignore_extensions = true`, logged at start as "Extensions are
  excluded from CSRF protection!") and exempts a request authenticated by an API token for
  that request only; CKAN 2.12 checks plugins' views but exempts a view for good once an
  anonymous or API-token request reached it. `csrf.py` checks the plugin's forms and
  writing actions itself, the same way on both.
- SQLAlchemy. CKAN 2.11 pins 1.4, CKAN 2.12 pins 2.0: `token_service.store` uses the
  2.0-style API that both offer.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import ckan.model as model
import ckan.plugins as p
import ckan.plugins.toolkit as tk
from ckan.types import Context, DataDict
from sqlalchemy import select

from .catalogue import MODEL_ID


def navl_validate(data_dict: DataDict, schema: dict[str, Any], context: Context) -> tuple[DataDict, dict[str, Any]]:
    """`tk.navl_validate` for the plugin's flat schemas: every value reaches its field's validators.

    CKAN 2.11: navl flattens any list whose first item is a dict into nested keys, whatever
    the schema says, so `roles: [{}, ""]` raised DataError ("Values in lists need to be
    dicts", a 400 "Integrity Error" instead of a field error) and `rate_limit: [{}]` vanished
    as if not given. CKAN 2.12 flattens only where the schema nests a schema and leaves other
    lists to the field's validators. None of our schemas nests one, so handing such lists
    over as tuples (which navl never flattens) gives 2.12's behaviour on both releases.
    """
    shielded = {
        key: tuple(value) if isinstance(value, list) and value and isinstance(value[0], dict) else value
        for key, value in data_dict.items()
    }
    return tk.navl_validate(shielded, schema, context)


def model_packages(model_ids: Collection[str] | None = None) -> list[tuple[model.Package, dict[str, Any]]]:
    """Active datasets with a `model_id` extra (only these ids, when given), each with its extras.

    CKAN 2.12 keeps a dataset's extras in a JSONB column `package.extras`; CKAN 2.11 in the
    table `package_extra` (one row per key). One indexed query either way, no search index:
    access must not depend on Solr being current.
    """
    active = model.Package.state == model.State.ACTIVE
    if hasattr(model, "PackageExtra"):  # CKAN 2.11
        extra = model.PackageExtra
        query = (
            select(model.Package)
            .join(extra, extra.package_id == model.Package.id)
            .where(active, extra.key == MODEL_ID, extra.state == model.State.ACTIVE)
        )
        if model_ids is not None:
            query = query.where(extra.value.in_(sorted(model_ids)))
    else:  # CKAN 2.12
        query = select(model.Package).where(active, model.Package.extras.has_key(MODEL_ID))
        if model_ids is not None:
            query = query.where(model.Package.extras[MODEL_ID].astext.in_(sorted(model_ids)))
    packages = model.Session.scalars(query.order_by(model.Package.id)).unique().all()
    return [(package, dict(package.extras)) for package in packages]


def notifier_plugins() -> list[Any]:
    """Plugins that deliver CKAN's mail themselves instead of `smtp.server`.

    CKAN 2.12 added the `INotifier` interface, which `mailer.mail_recipient` asks first;
    CKAN 2.11 has no such interface and always uses `smtp.server`.
    """
    interface = getattr(p, "INotifier", None)
    return list(p.PluginImplementations(interface)) if interface is not None else []
