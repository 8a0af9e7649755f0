"""mltokens core: token lifecycle, issuers, revocation store and validator.

This package never imports CKAN; the CKAN plugin imports it.
"""

__version__ = "0.1.0"
