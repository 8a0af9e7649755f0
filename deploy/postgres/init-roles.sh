#!/bin/sh
# First start of the compose PostgreSQL: one role and database for CKAN, one for the
# token store, and a login role for the validator with no rights yet (the
# `db-grants` service grants it exactly what it needs once the tables exist).
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
     -v ckan_pw="$CKAN_DB_PASSWORD" -v mltokens_pw="$STORE_DB_PASSWORD" \
     -v validator_pw="$VALIDATOR_DB_PASSWORD" <<'SQL'
CREATE ROLE ckan LOGIN PASSWORD :'ckan_pw';
CREATE DATABASE ckan OWNER ckan ENCODING 'UTF8';
CREATE ROLE mltokens LOGIN PASSWORD :'mltokens_pw';
CREATE DATABASE mltokens OWNER mltokens ENCODING 'UTF8';
CREATE ROLE mltokens_validator LOGIN PASSWORD :'validator_pw';
REVOKE ALL ON DATABASE mltokens FROM PUBLIC;
GRANT CONNECT ON DATABASE mltokens TO mltokens_validator;
SQL
