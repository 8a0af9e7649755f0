"""Write CKAN__* and CKANEXT__* environment variables into ckan.ini with `ckan config-tool`.

The option name is the variable's name lower-cased with "__" read as ".":
CKAN__PLUGINS -> ckan.plugins, CKANEXT__MLTOKENS__ISSUER -> ckanext.mltokens.issuer.
Usage: python env-to-ini.py CKAN_INI
"""

import os
import subprocess
import sys


def options(environ):
    return [
        f"{name.lower().replace('__', '.')} = {value}"
        for name, value in sorted(environ.items())
        if name.startswith(("CKAN__", "CKANEXT__"))
    ]


if __name__ == "__main__":
    found = options(os.environ)
    if found:
        subprocess.run(["ckan", "config-tool", sys.argv[1], *found], check=True)
