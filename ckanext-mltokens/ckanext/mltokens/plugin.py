"""CKAN plugin `mltokens`: ML API tokens on the user page, in the action API and the CLI."""

from __future__ import annotations

import ckan.plugins as p
import ckan.plugins.toolkit as tk
from ckan.common import CKANConfig

from . import notify, service


@tk.blanket.auth_functions
@tk.blanket.actions
@tk.blanket.helpers
@tk.blanket.blueprints
@tk.blanket.validators
@tk.blanket.cli
@tk.blanket.config_declarations
class MltokensPlugin(p.SingletonPlugin):
    p.implements(p.IConfigurer)
    p.implements(p.IConfigurable)

    # IConfigurer
    def update_config(self, config: CKANConfig) -> None:
        tk.add_template_directory(config, "templates")
        tk.add_resource("assets", "mltokens")

    # IConfigurable
    def configure(self, config: CKANConfig) -> None:
        """Refuse to start with invalid `ckanext.mltokens.*` options."""
        service.settings()
        service.unused_after()
        notify.expiry_leads()
