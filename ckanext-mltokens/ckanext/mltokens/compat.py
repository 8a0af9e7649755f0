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

from typing import Any

import ckan.plugins as p
import ckan.plugins.toolkit as tk
from ckan.types import Context, DataDict


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


def notifier_plugins() -> list[Any]:
    """Plugins that deliver CKAN's mail themselves instead of `smtp.server`.

    CKAN 2.12 added the `INotifier` interface, which `mailer.mail_recipient` asks first;
    CKAN 2.11 has no such interface and always uses `smtp.server`.
    """
    interface = getattr(p, "INotifier", None)
    return list(p.PluginImplementations(interface)) if interface is not None else []
