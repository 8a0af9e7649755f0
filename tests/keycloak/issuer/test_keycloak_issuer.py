"""The Keycloak issuer through python-keycloak, against the Keycloak-compatible test server."""

from __future__ import annotations

import os
import re
import uuid
from datetime import timedelta
from pathlib import Path

import jwt
import pytest
import requests

from tests.keycloak.conftest import Realm, add_issuer_user
from token_service import errors
from token_service.issuers import ORGANIZATION, Owner
from token_service.issuers.keycloak import KeycloakIssuer
from token_service.issuers.keycloak_bootstrap import bootstrap
from token_service.lifecycle import Actor, Lifecycle
from token_service.verify import verify

ALICE = Owner("ckan-id-alice", "alice")
AS_ALICE = Actor(ALICE.id, ALICE.name)
PREDICT = "model:sentiment:predict"
CONFIG_DECLARATION = (
    Path(__file__).resolve().parents[3] / "ckanext-mltokens" / "ckanext" / "mltokens" / "config_declaration.yaml"
)
TRAIN = "model:sentiment:train"


def decode(token: str, issuer: KeycloakIssuer, audience: str, handed_out: bool = True) -> dict:
    """A token as handed out (`mlt_` and Keycloak's JWT), or with `handed_out` False a JWT a client
    fetched from Keycloak itself (no prefix), verified with Keycloak's published keys."""
    if handed_out:
        assert token.startswith("mlt_eyJ")
        token = token.removeprefix("mlt_")
    key = jwt.PyJWKClient(f"{issuer.issuer_url}/protocol/openid-connect/certs").get_signing_key_from_jwt(token)
    return jwt.decode(token, key, algorithms=["RS256"], audience=audience, issuer=issuer.issuer_url)


def test_grantable_roles_are_the_owners_prefixed_roles(realm: Realm, kc_issuer: KeycloakIssuer):
    realm.admin.create_realm_role({"name": "admin-ish"})
    realm.add_user("alice", (PREDICT, "admin-ish"))
    realm.add_user("carol", (PREDICT,), enabled=False)
    assert kc_issuer.grantable_roles(ALICE) == {PREDICT}
    with pytest.raises(errors.NoIssuerAccount, match='"carol" in Keycloak.* is disabled'):
        kc_issuer.grantable_roles(Owner("x", "carol"))
    with pytest.raises(errors.NoIssuerAccount, match='"nobody" has no account in Keycloak'):
        kc_issuer.grantable_roles(Owner("x", "nobody"))


def test_create_makes_a_client_and_mints_a_token_with_our_claims(
    realm: Realm, kc_lifecycle: Lifecycle, kc_issuer: KeycloakIssuer, clock
):
    realm.add_user("alice", (PREDICT, TRAIN))
    issued = kc_lifecycle.create(ALICE, "notebook", [PREDICT], timedelta(hours=2))
    claims = decode(issued.secret, kc_issuer, realm.settings.audience)
    assert claims["token_id"] == issued.info.id and claims["owner"] == ALICE.id and claims["owner_name"] == "alice"
    assert PREDICT in claims["realm_access"]["roles"] and TRAIN not in claims["realm_access"]["roles"]
    assert claims["jti"] and issued.info.client_id == "mlt-" + issued.info.id
    assert abs(claims["exp"] - (clock() + timedelta(hours=2)).timestamp()) < 60
    client = realm.admin.get_client(realm.admin.get_client_id(issued.info.client_id))
    assert client["serviceAccountsEnabled"] and not client["standardFlowEnabled"] and not client["publicClient"]
    assert client["attributes"]["access.token.lifespan"] == "7200"
    with kc_lifecycle.store.engine.connect() as conn:  # the client secret is nowhere in our store
        secret = realm.admin.get_client_secrets(client["id"])["value"]
        dump = str(conn.exec_driver_sql("SELECT * FROM mltokens.token").fetchall())
    assert secret not in dump and issued.secret not in dump
    verdict = verify(
        issued.secret, realm.settings, kc_issuer.jwks(), kc_lifecycle.store, clock, issuer_url=kc_issuer.issuer_url
    )
    assert verdict.valid, verdict.reason


def test_roles_the_owner_does_not_hold_are_refused(realm: Realm, kc_lifecycle: Lifecycle):
    realm.add_user("alice", (PREDICT,))
    with pytest.raises(errors.RolesNotAllowed):
        kc_lifecycle.create(ALICE, "t", [TRAIN])
    assert not [c for c in realm.admin.get_clients() if c["clientId"].startswith("mlt-")]


def test_a_token_cut_short_by_sso_session_max_is_refused_and_leaves_nothing(realm: Realm, kc_lifecycle: Lifecycle):
    """keycloak/keycloak#43410: exp is capped at the realm's SSO Session Max."""
    realm.add_user("alice", (PREDICT,))
    realm.admin.update_realm(realm.name, {"ssoSessionMaxLifespan": 3600})
    with pytest.raises(errors.TTLTooLong) as caught:
        kc_lifecycle.create(ALICE, "long", [PREDICT], timedelta(days=2))
    assert "expires sooner than asked" in caught.value.message and caught.value.field == "ttl"
    assert not [c for c in realm.admin.get_clients() if c["clientId"].startswith("mlt-")]
    assert kc_lifecycle.list(AS_ALICE) == []
    assert kc_lifecycle.create(ALICE, "short", [PREDICT], timedelta(minutes=30)).info.status == "active"


def test_client_session_max_cuts_tokens_too_and_bootstrap_raises_both_caps(
    realm: Realm, kc_lifecycle: Lifecycle, caplog
):
    """Client Session Max (realm clientSessionMaxLifespan, or the client attribute
    client.session.max.lifespan) caps a client-credentials token's exp as SSO Session Max does."""
    realm.add_user("alice", (PREDICT,))
    master = realm.admin
    master.update_realm(realm.name, {"ssoSessionMaxLifespan": 3600, "clientSessionMaxLifespan": 1800})
    with pytest.raises(errors.TTLTooLong):
        kc_lifecycle.create(ALICE, "long", [PREDICT], timedelta(days=2))
    assert "ssoSessionMaxLifespan" in caplog.text and "clientSessionMaxLifespan" in caplog.text
    master.update_realm(realm.name, {"ssoSessionMaxLifespan": 10 * 86400})  # only Client Session Max left
    with pytest.raises(errors.TTLTooLong):
        kc_lifecycle.create(ALICE, "long", [PREDICT], timedelta(days=2))

    done = bootstrap(master, realm.settings, ())
    session_max = int((realm.settings.max_ttl + timedelta(days=1)).total_seconds())
    assert done == [
        f"raised realm {realm.name}'s {cap} to {session_max}s to fit max_ttl"
        for cap in ("SSO Session Max (ssoSessionMaxLifespan)", "Client Session Max (clientSessionMaxLifespan)")
    ]
    assert bootstrap(master, realm.settings, ()) == []
    issued = kc_lifecycle.create(ALICE, "long", [PREDICT], timedelta(days=2))
    assert issued.info.status == "active"

    # A Client Session Max set on the token's own client later: its renewal is refused.
    internal = master.get_client_id(issued.info.client_id)
    master.update_client(internal, {"attributes": {"client.session.max.lifespan": "3600"}})
    with pytest.raises(errors.TTLTooLong):
        kc_lifecycle.renew(issued.info.id, AS_ALICE, timedelta(days=2))
    assert "client.session.max.lifespan of " + issued.info.client_id in caplog.text


def token_endpoint(issuer: KeycloakIssuer) -> str:
    return f"{issuer.issuer_url}/protocol/openid-connect/token"


def test_renew_regenerates_the_secret_and_mints_anew(realm: Realm, kc_lifecycle: Lifecycle, kc_issuer, store, clock):
    realm.add_user("alice", (PREDICT,))
    first = kc_lifecycle.create(ALICE, "t", [PREDICT], timedelta(hours=1))
    internal = realm.admin.get_client_id(first.info.client_id)
    old_secret = realm.admin.get_client_secrets(internal)["value"]
    renewed = kc_lifecycle.renew(first.info.id, AS_ALICE, timedelta(hours=3))
    assert realm.admin.get_client_secrets(internal)["value"] != old_secret
    assert realm.admin.get_client(internal)["attributes"]["access.token.lifespan"] == "10800"
    old, new = (
        jwt.decode(first.secret.removeprefix("mlt_"), options={"verify_signature": False}),
        jwt.decode(renewed.secret.removeprefix("mlt_"), options={"verify_signature": False}),
    )
    assert new["jti"] != old["jti"] and new["token_id"] == old["token_id"]
    assert store.revocation_for(old["jti"], None, clock()) is not None
    refused = requests.post(
        token_endpoint(kc_issuer),
        timeout=5,
        data={"grant_type": "client_credentials", "client_id": first.info.client_id, "client_secret": old_secret},
    )
    assert refused.status_code == 401


def test_revoke_writes_the_row_then_disables_the_client(realm: Realm, kc_lifecycle: Lifecycle, kc_issuer, store, clock):
    realm.add_user("alice", (PREDICT,))
    issued = kc_lifecycle.create(ALICE, "t", [PREDICT], timedelta(hours=1))
    internal = realm.admin.get_client_id(issued.info.client_id)
    kc_lifecycle.revoke(issued.info.id, AS_ALICE, "leaked")
    assert realm.admin.get_client(internal)["enabled"] is False
    assert store.revocation_for(None, issued.info.id, clock()) is not None


def test_revoke_stands_when_keycloak_is_down(realm: Realm, kc_settings, store, clock):
    realm.add_user("alice", (PREDICT,))
    up = Lifecycle(kc_settings, store, KeycloakIssuer(kc_settings, clock), clock)
    issued = up.create(ALICE, "t", [PREDICT], timedelta(hours=1))
    down_settings = kc_settings.replace(keycloak_server_url="http://127.0.0.1:9", keycloak_timeout=timedelta(seconds=1))
    down = Lifecycle(down_settings, store, KeycloakIssuer(down_settings, clock), clock)
    info = down.revoke(issued.info.id, AS_ALICE)
    assert info.status == "revoked" and store.revocation_for(None, issued.info.id, clock()) is not None
    internal = realm.admin.get_client_id(issued.info.client_id)
    assert realm.admin.get_client(internal)["enabled"] is True  # left for `mltokens sync`
    with pytest.raises(errors.IssuerUnavailable) as caught:
        down.create(ALICE, "t2", [PREDICT])
    assert "Keycloak could not" in caught.value.message and "127.0.0.1" not in caught.value.message


def test_client_credentials_kind_gives_a_client_that_fetches_its_own_tokens(
    realm: Realm, kc_lifecycle: Lifecycle, kc_issuer, store, clock
):
    realm.add_user("alice", (PREDICT,))
    issued = kc_lifecycle.create(ALICE, "pipeline", [PREDICT], timedelta(days=1), kind="client_credentials")
    assert issued.info.kind == "client_credentials" and issued.secret.count(".") != 2
    got = requests.post(
        token_endpoint(kc_issuer),
        timeout=5,
        data={"grant_type": "client_credentials", "client_id": issued.info.client_id, "client_secret": issued.secret},
    )
    assert got.status_code == 200
    claims = decode(got.json()["access_token"], kc_issuer, realm.settings.audience, handed_out=False)
    assert claims["token_id"] == issued.info.id
    kc_lifecycle.revoke(issued.info.id, AS_ALICE)
    # every jti minted from that client is covered by the token-id revocation
    assert store.revocation_for(claims["jti"], claims["token_id"], clock()) is not None
    refused = requests.post(
        token_endpoint(kc_issuer),
        timeout=5,
        data={"grant_type": "client_credentials", "client_id": issued.info.client_id, "client_secret": issued.secret},
    )
    assert refused.status_code in (400, 401)


def test_client_credentials_clients_get_the_short_lifespan_never_the_whole_ttl(realm: Realm, kc_lifecycle: Lifecycle):
    realm.add_user("alice", (PREDICT,))
    lifespans = {}
    for name, ttl in (("day", timedelta(days=1)), ("minutes", timedelta(minutes=10))):
        issued = kc_lifecycle.create(ALICE, name, [PREDICT], ttl, kind="client_credentials")
        client = realm.admin.get_client(realm.admin.get_client_id(issued.info.client_id))
        lifespans[name] = client["attributes"]["access.token.lifespan"]
        claims = {m["name"]: m["config"] for m in client["protocolMappers"]}
        assert claims["token_exp"]["claim.value"] == str(int(issued.info.expires_at.timestamp()))
        assert claims["token_exp"]["jsonType.label"] == "long"
        assert claims["token_cred"]["claim.value"].startswith("client:")
    assert lifespans == {"day": "900", "minutes": "600"}  # client_credentials_lifespan (15m), or a shorter ttl
    renewed = kc_lifecycle.renew(issued.info.id, AS_ALICE, timedelta(days=2))
    client = realm.admin.get_client(realm.admin.get_client_id(issued.info.client_id))
    assert client["attributes"]["access.token.lifespan"] == "900"
    claims = {m["name"]: m["config"].get("claim.value") for m in client["protocolMappers"]}
    assert claims["token_exp"] == str(int(renewed.info.expires_at.timestamp()))


def test_the_local_issuer_offers_only_access_tokens(lifecycle: Lifecycle):
    with pytest.raises(errors.InvalidInput) as caught:
        lifecycle.create(ALICE, "t", ["model:sentiment:predict"], kind="client_credentials")
    assert caught.value.field == "kind"


def test_sync_retires_dead_clients_and_revokes_tokens_of_disabled_owners(realm: Realm, kc_settings, store, clock):
    from token_service.issuers.keycloak_sync import sync

    alice_id = realm.add_user("alice", (PREDICT,))
    realm.add_user("bob", (PREDICT,))
    bob = Owner("ckan-id-bob", "bob")
    up = Lifecycle(kc_settings, store, KeycloakIssuer(kc_settings, clock), clock)
    revoked_while_down = up.create(ALICE, "a1", [PREDICT], timedelta(hours=1))
    expiring = up.create(ALICE, "a2", [PREDICT], timedelta(hours=1))
    bobs = up.create(bob, "b1", [PREDICT], timedelta(days=1))
    alices_live = up.create(ALICE, "a3", [PREDICT], timedelta(days=1))
    down_settings = kc_settings.replace(keycloak_server_url="http://127.0.0.1:9", keycloak_timeout=timedelta(seconds=1))
    Lifecycle(down_settings, store, KeycloakIssuer(down_settings, clock), clock).revoke(
        revoked_while_down.info.id, AS_ALICE
    )
    realm.admin.update_user(alice_id, {"enabled": False})
    clock.advance(timedelta(hours=2))  # a2 has expired

    report = sync(up, up.issuer)
    clients = {c["clientId"] for c in realm.admin.get_clients()}
    assert revoked_while_down.info.client_id not in clients and expiring.info.client_id not in clients
    assert bobs.info.client_id in clients and alices_live.info.client_id in clients
    # alice is disabled in Keycloak: her live token is revoked; her expired one stays expired (not
    # revoked, not counted), and with its client gone it cannot be renewed back to life
    assert report.clients_deleted == 2 and report.tokens_revoked == 1
    assert up.show(alices_live.info.id, AS_ALICE).status == "revoked"
    assert up.show(expiring.info.id, AS_ALICE).status == "expired"
    with pytest.raises(errors.IssuerUnavailable, match="client is missing"):
        up.renew(expiring.info.id, AS_ALICE)

    realm.admin.delete_user(realm.admin.get_user_id("bob"))
    report = sync(up, up.issuer)
    assert report.tokens_revoked == 1 and up.show(bobs.info.id, AS_ALICE.__class__("x", "x", True)).status == "revoked"
    assert report.clients_deleted == 1  # alice's, revoked by the last sync; bob's was live when listed
    assert sync(up, up.issuer).clients_deleted == 1  # bob's
    assert not [c for c in realm.admin.get_clients() if c["clientId"].startswith("mlt-")]


def test_bootstrap_and_sync_from_the_command_line(keycloak_server, db_url):
    """The operator's path of docs/keycloak.md: MLTOKENS_ISSUER=keycloak is set, the issuer's client
    secret is not (bootstrap makes it), the Keycloak admin comes as options."""
    import yaml
    from click.testing import CliRunner

    from token_service.cli import main

    env = {
        "MLTOKENS_DATABASE_URL": db_url,
        "MLTOKENS_ISSUER": "keycloak",
        "MLTOKENS_KEYCLOAK_REALM": "ml-cli",
        "MLTOKENS_KEYCLOAK_SERVER_URL": keycloak_server.url,
    }
    assert not [k for k in os.environ if k.startswith("MLTOKENS_KEYCLOAK_ADMIN")]
    admin = ["--admin-username", keycloak_server.admin_user, "--admin-password", keycloak_server.admin_password]
    first = CliRunner().invoke(main, ["keycloak", "bootstrap", *admin, "--show-secret"], env=env)
    assert first.exit_code == 0, first.output
    assert "created realm ml-cli" in first.output
    assert "granted mltokens-admin realm-management roles" in first.output
    secret = re.search(r"^MLTOKENS_KEYCLOAK_ADMIN_CLIENT_SECRET=(\S+)$", first.output, re.MULTILINE)[1]
    # ... and the CKAN ini option, as the plugin declares it
    assert f"\nckanext.mltokens.keycloak_admin_client_secret = {secret}\n" in first.output
    declared = yaml.safe_load(CONFIG_DECLARATION.read_text())
    options = {o["key"] for group in declared["groups"] for o in group["options"]}
    assert "ckanext.mltokens.keycloak_admin_client_secret" in options
    again = CliRunner().invoke(main, ["keycloak", "bootstrap", *admin], env=env)
    assert again.exit_code == 0 and "nothing to do" in again.output
    try:
        # The issuer now runs as its own service account, not as the master admin.
        synced = CliRunner().invoke(main, ["sync"], env=env | {"MLTOKENS_KEYCLOAK_ADMIN_CLIENT_SECRET": secret})
        assert synced.exit_code == 0, synced.output
        assert "deleted 0 token client(s), revoked 0 token(s)" in synced.output
        bad = CliRunner().invoke(main, ["sync"], env=env | {"MLTOKENS_KEYCLOAK_ADMIN_CLIENT_SECRET": "wrong"})
        assert bad.exit_code == 1 and "Keycloak could not" in bad.output
        # Only bootstrap does without the secret.
        unset = CliRunner().invoke(main, ["sync"], env=env)
        assert unset.exit_code == 1 and "keycloak_admin_client_secret" in unset.output
    finally:
        keycloak_server.admin().delete_realm("ml-cli")


def test_per_token_limits_travel_in_the_keycloak_token(realm: Realm, kc_lifecycle: Lifecycle, kc_issuer):
    realm.add_user("alice", (PREDICT,))
    issued = kc_lifecycle.create(ALICE, "limited", [PREDICT], timedelta(hours=1), rate_limit=3, daily_quota=500)
    assert decode(issued.secret, kc_issuer, realm.settings.audience)["limits"] == {"rps": 3.0, "daily": 500}


def test_the_issuer_can_log_in_as_an_admin_user_instead(realm: Realm, kc_settings, keycloak_server, store, clock):
    realm.add_user("alice", (PREDICT,))
    as_user = kc_settings.replace(
        keycloak_admin_client_secret="",
        keycloak_admin_username=keycloak_server.admin_user,
        keycloak_admin_password=keycloak_server.admin_password,
    )
    as_user.check()
    lifecycle = Lifecycle(as_user, store, KeycloakIssuer(as_user, clock), clock)
    assert lifecycle.create(ALICE, "t", [PREDICT], timedelta(hours=1)).info.status == "active"
    wrong = as_user.replace(keycloak_admin_password="wrong")
    with pytest.raises(errors.IssuerUnavailable):
        Lifecycle(wrong, store, KeycloakIssuer(wrong, clock), clock).create(ALICE, "t2", [PREDICT])


def test_owners_in_a_realm_of_their_own_with_a_least_privilege_master_user(
    realm: Realm, keycloak_server, kc_settings, store, clock
):
    """Humans in a users' realm (its own session limits), ML-token clients in keycloak_realm; the
    issuer logs in as a master-realm user that holds ADMIN_ROLES over the ML realm and only
    USERS_REALM_ROLES over the users' realm (the ML realm's service account cannot read another realm)."""
    from token_service.issuers.keycloak_sync import sync

    master = keycloak_server.admin()
    users_realm = f"users-{uuid.uuid4().hex[:10]}"
    master.create_realm({"realm": users_realm, "enabled": True, "ssoSessionMaxLifespan": 36000})
    principal = f"mltokens-issuer-{uuid.uuid4().hex[:6]}"
    try:
        people = keycloak_server.admin(users_realm)
        people.create_realm_role({"name": PREDICT})
        alice_id = people.create_user({"username": "alice", "enabled": True})
        people.assign_realm_roles(alice_id, [people.get_realm_role(PREDICT)])
        add_issuer_user(master, principal, "issuer-pw", realm.name, users_realm)
        two = kc_settings.replace(
            keycloak_users_realm=users_realm,
            keycloak_admin_client_secret="",
            keycloak_admin_username=principal,
            keycloak_admin_password="issuer-pw",
            keycloak_admin_realm="master",
        )
        two.check()
        lifecycle = Lifecycle(two, store, KeycloakIssuer(two, clock), clock)
        assert lifecycle.grantable_roles(ALICE) == [PREDICT]  # alice of the users' realm
        with pytest.raises(errors.RolesNotAllowed):
            lifecycle.create(ALICE, "t", [TRAIN], timedelta(hours=1))
        issued = lifecycle.create(ALICE, "t", [PREDICT], timedelta(hours=1))  # a client in the ML realm
        assert realm.admin.get_client_id(issued.info.client_id)
        assert PREDICT in decode(issued.secret, lifecycle.issuer, two.audience)["realm_access"]["roles"]
        people.update_user(alice_id, {"enabled": False})
        assert sync(lifecycle, lifecycle.issuer).tokens_revoked == 1
        assert lifecycle.show(issued.info.id, AS_ALICE).status == "revoked"
    finally:
        master.delete_realm(users_realm)
        master.change_current_realm("master")
        master.delete_user(master.get_user_id(principal))


def test_an_organization_token_gets_prefixed_roles_and_sync_leaves_it_alone(
    realm: Realm, kc_settings, kc_issuer: KeycloakIssuer, store, clock
):
    """issue 14 item 5: an organization is no Keycloak user. Its tokens may carry the realm's prefixed roles
    (the CKAN plugin narrows them to its models), name it as owner of kind `organization`, and survive
    `mltokens sync`, which revokes only the tokens of users gone from Keycloak."""
    from token_service.issuers.keycloak_sync import sync

    realm.admin.create_realm_role({"name": "admin-ish"})
    realm.add_user("alice", (PREDICT, TRAIN))
    team = Owner("ckan-org-id", "ml-team", ORGANIZATION)
    assert kc_issuer.grantable_roles(team) >= {PREDICT, TRAIN} and "admin-ish" not in kc_issuer.grantable_roles(team)
    up = Lifecycle(kc_settings, store, kc_issuer, clock)
    issued = up.create(team, "pipeline", [TRAIN], timedelta(hours=2), Actor(ALICE.id, ALICE.name, acting_for=team))
    claims = decode(issued.secret, kc_issuer, realm.settings.audience)
    assert (claims["owner"], claims["owner_name"], claims["owner_kind"]) == ("ckan-org-id", "ml-team", ORGANIZATION)
    assert TRAIN in claims["realm_access"]["roles"]
    assert sync(up, up.issuer).tokens_revoked == 0  # no Keycloak user "ml-team": not a reason to revoke
    assert up.show(issued.info.id, Actor.operator()).status == "active"
