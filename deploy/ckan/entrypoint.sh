#!/bin/sh
# Start CKAN with the mltokens plugin: write ckan.ini on first start, apply settings
# from the environment to it, upgrade CKAN's tables, create the first sysadmin,
# then exec the command (gunicorn by default).
#
#   CKAN__<NAME>           sets option <name> in ckan.ini, "__" becoming "." and the
#   CKANEXT__<NAME>        name lower-cased: CKAN__PLUGINS -> ckan.plugins,
#                          CKANEXT__MLTOKENS__MODEL_API_URL -> ckanext.mltokens.model_api_url
#   CKAN_SYSADMIN_NAME, CKAN_SYSADMIN_EMAIL, CKAN_SYSADMIN_PASSWORD
#                          create (or promote) this sysadmin at start
#   CKAN_SQLALCHEMY_URL, CKAN_SOLR_URL, CKAN_REDIS_URL, CKAN_SITE_URL, CKAN_SMTP_*
#                          read by CKAN itself
#   CKAN_DB_UPGRADE=false  skip `ckan db upgrade` (for jobs running one `ckan` command)
set -eu

# Generated on first start, not in the image, so every deployment has its own secrets.
if [ ! -f "$CKAN_INI" ]; then
    ckan generate config "$CKAN_INI"
fi

python /srv/app/env-to-ini.py "$CKAN_INI"

# CKAN's tables and any plugin migrations. The token store's tables are created by
# `mltokens db upgrade` (the compose service "migrate", the Kubernetes Job). Jobs that
# run a `ckan` command against a site already set up (the CronJob mltokens-notify) skip
# it with CKAN_DB_UPGRADE=false.
if [ "${CKAN_DB_UPGRADE:-true}" != "false" ]; then
    ckan db upgrade
fi

if [ -n "${CKAN_SYSADMIN_NAME:-}" ]; then
    ckan sysadmin add "$CKAN_SYSADMIN_NAME" --create \
        "email=${CKAN_SYSADMIN_EMAIL:?set CKAN_SYSADMIN_EMAIL}" \
        "password=${CKAN_SYSADMIN_PASSWORD:?set CKAN_SYSADMIN_PASSWORD}"
fi

exec "$@"
