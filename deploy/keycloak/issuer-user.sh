#!/usr/bin/env bash
# The issuer's least-privilege master-realm user for two realms (docs/keycloak.md, "One realm or
# two"): a realm import cannot make a master-realm user, so compose's one-shot `keycloak-setup`
# runs this with Keycloak's own kcadm.sh once Keycloak has imported both realms. Idempotent: it
# creates the user if missing, sets its password, and grants (again) only
#   over the ML realm (<ML_REALM>-realm):      what bootstrap grants the one-realm service account;
#   over the users' realm (<USERS_REALM>-realm): find users, read their realm and client roles.
# tests/deploy/test_keycloak_realm.py runs it against the real Keycloak.
set -euo pipefail

: "${KEYCLOAK_URL:?}" "${KC_BOOTSTRAP_ADMIN_USERNAME:?}" "${KC_BOOTSTRAP_ADMIN_PASSWORD:?}"
: "${ML_REALM:?}" "${USERS_REALM:?}" "${ISSUER_USERNAME:?}" "${ISSUER_PASSWORD:?}"
KCADM=${KCADM:-/opt/keycloak/bin/kcadm.sh}
config=$(mktemp)
trap 'rm -f "$config"' EXIT
kcadm() { "$KCADM" "$@" --config "$config"; }

kcadm config credentials --server "$KEYCLOAK_URL" --realm master \
  --user "$KC_BOOTSTRAP_ADMIN_USERNAME" --password "$KC_BOOTSTRAP_ADMIN_PASSWORD"
if ! kcadm get users -r master -q exact=true -q "username=$ISSUER_USERNAME" --fields id | grep -q '"id"'; then
  kcadm create users -r master -s "username=$ISSUER_USERNAME" -s enabled=true
fi
kcadm set-password -r master --username "$ISSUER_USERNAME" --new-password "$ISSUER_PASSWORD"
kcadm add-roles -r master --uusername "$ISSUER_USERNAME" --cclientid "$ML_REALM-realm" \
  --rolename manage-clients --rolename view-clients --rolename manage-users \
  --rolename view-users --rolename query-users --rolename view-realm
kcadm add-roles -r master --uusername "$ISSUER_USERNAME" --cclientid "$USERS_REALM-realm" \
  --rolename view-users --rolename query-users --rolename view-clients
echo "master-realm user $ISSUER_USERNAME may manage $ML_REALM and read $USERS_REALM"
