"""CKAN plugin `mltokens`: ML API token management on top of token_service."""
import ckan.plugins as p


class MltokensPlugin(p.SingletonPlugin):
    pass
