"""CKAN plugin `mltokens`: ML API tokens on the user page, in the action API and the CLI."""

from __future__ import annotations

import ckan.model as model
import ckan.plugins as p
import ckan.plugins.toolkit as tk
from ckan.common import CKANConfig

from . import access, notify, organizations, service


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
    p.implements(p.IOrganizationController, inherit=True)

    # IConfigurer
    def update_config(self, config: CKANConfig) -> None:
        tk.add_template_directory(config, "templates")
        tk.add_resource("assets", "mltokens")

    # IConfigurable
    def configure(self, config: CKANConfig) -> None:
        """Refuse to start with invalid `ckanext.mltokens.*` options."""
        service.settings()
        service.token_endpoint()
        access.mode()
        service.unused_after()
        notify.expiry_leads()

    # IOrganizationController
    def delete(self, entity: model.Group) -> None:
        """An organization being deleted loses its tokens (organization tokens, organizations.py).

        CKAN calls this inside `organization_delete`, after its own checks (authorization, no
        datasets left) and before it commits: a failed revocation leaves the organization in
        place with an error, never a deleted organization with working tokens.
        """
        organizations.revoke_all(entity, "organization deleted", "ckan organization_delete")
