"""Organization tokens (issue 14 item 5), through real CKAN actions, auth and pages: owned by the
organization, limited to its models, managed by its admins, outliving their creator, audited."""

from __future__ import annotations

import html
import re
from collections.abc import Callable
from typing import Any

import ckan.model as model
import pytest
from ckan.plugins.toolkit import NotAuthorized, ObjectNotFound, ValidationError
from ckan.tests import factories
from ckan.tests.helpers import call_action
from ckanext.mltokens import service
from sqlalchemy import select

from token_service.lifecycle import Actor
from token_service.store import AuditEvent, Token

from .conftest import PASSWORD, PREDICT, Visitor, claims, page_url, publish_model, roles_of, secret_in
from .test_rotate import works

pytestmark = pytest.mark.usefixtures("with_plugins", "non_clean_db", "clean_tokens")

TRAIN = "model:sentiment:train"
VISION = "model:vision:predict"
HOSTILE = '<script>alert("org")</script> & "quotes" \'single\''


def organization(**members: dict[str, Any]) -> dict[str, Any]:
    """An organization with members by capacity (admin=..., editor=..., member=...) and a sentiment model dataset."""
    org = factories.Organization(
        users=[{"name": user["name"], "capacity": capacity} for capacity, user in members.items()], image_url=""
    )
    publish_model("sentiment", "predict, train", owner_org=org["id"], private=True)
    return org


@pytest.fixture
def staff() -> dict[str, dict[str, Any]]:
    return {
        role: factories.User(password=PASSWORD, image_url="")
        for role in ("admin", "admin2", "editor", "member", "outsider")
    }


@pytest.fixture
def org(staff: dict[str, dict[str, Any]]) -> dict[str, Any]:
    org = organization(admin=staff["admin"], editor=staff["editor"], member=staff["member"])
    call_action("organization_member_create", id=org["id"], username=staff["admin2"]["name"], role="admin")
    return org


def audit(token_id: str) -> list[tuple[str, str, str, str]]:
    with service.lifecycle().store.transaction() as s:
        rows = s.execute(
            select(AuditEvent.action, AuditEvent.actor_name, AuditEvent.owner_id, AuditEvent.owner_kind)
            .where(AuditEvent.token_id == token_id)
            .order_by(AuditEvent.id)
        ).all()
    return [tuple(row) for row in rows]


def token_count() -> int:
    with service.lifecycle().store.transaction() as s:
        return len(s.scalars(select(Token.id)).all())


def test_an_admin_creates_an_organization_token_limited_to_its_models(act: Callable, staff: dict, org: dict) -> None:
    admin = staff["admin"]["name"]
    assert roles_of(act("mltoken_roles_list", admin, owner_org=org["name"])) == [PREDICT, TRAIN]
    assert VISION in roles_of(act("mltoken_roles_list", admin))  # the admin's own roles are wider

    created = act("mltoken_create", admin, owner_org=org["name"], name="batch scoring", roles=[PREDICT])
    assert (created["owner_id"], created["owner_name"], created["owner_kind"]) == (
        org["id"],
        org["name"],
        "organization",
    )
    c = claims(created["token"])
    assert (c["owner"], c["owner_kind"], c["roles"]) == (org["id"], "organization", [PREDICT])
    assert [t["id"] for t in act("mltoken_list", admin, owner_org=org["id"])] == [created["id"]]
    assert act("mltoken_list", admin) == []  # not the admin's own token

    with pytest.raises(ValidationError) as refused:  # another organization's model (or nobody's)
        act("mltoken_create", admin, owner_org=org["name"], name="wider", roles=[PREDICT, VISION])
    assert refused.value.error_dict["roles"] == ["You may not grant: model:vision:predict."]
    assert token_count() == 1


def test_an_organization_with_no_model_offers_no_role(act: Callable, staff: dict) -> None:
    bare = factories.Organization(users=[{"name": staff["admin"]["name"], "capacity": "admin"}])
    factories.Dataset(owner_org=bare["id"])  # an ordinary dataset
    gone = publish_model("vision", "predict", owner_org=bare["id"])
    call_action("package_delete", id=gone["id"])  # a deleted model dataset gives no role
    assert act("mltoken_roles_list", staff["admin"]["name"], owner_org=bare["id"]) == []
    with pytest.raises(ValidationError):
        act("mltoken_create", staff["admin"]["name"], owner_org=bare["id"], name="t", roles=[VISION])


@pytest.mark.parametrize("who", ["editor", "member", "outsider"])
def test_editors_members_and_others_cannot_touch_an_organizations_tokens(
    act: Callable, staff: dict, org: dict, who: str
) -> None:
    token = act("mltoken_create", staff["admin"]["name"], owner_org=org["id"], name="t", roles=[PREDICT])
    name = staff[who]["name"]
    for action, data in [
        ("mltoken_create", {"name": "mine", "roles": [PREDICT]}),
        ("mltoken_list", {}),
        ("mltoken_roles_list", {}),
        ("mltoken_show", {"id": token["id"]}),
        ("mltoken_renew", {"id": token["id"]}),
        ("mltoken_revoke", {"id": token["id"]}),
        ("mltoken_revoke_all", {}),
    ]:
        with pytest.raises(NotAuthorized):
            act(action, name, owner_org=org["id"], **data)
    for action in ("mltoken_show", "mltoken_renew", "mltoken_revoke"):  # nor without owner_org: not theirs
        with pytest.raises(ObjectNotFound):
            act(action, name, id=token["id"])
    assert act("mltoken_show", staff["admin"]["name"], owner_org=org["id"], id=token["id"])["status"] == "active"


def test_a_sysadmin_manages_any_organizations_tokens(act: Callable, staff: dict, org: dict, sysadmin: dict) -> None:
    token = act("mltoken_create", sysadmin["name"], owner_org=org["id"], name="by root", roles=[TRAIN])
    assert token["owner_kind"] == "organization"
    assert [t["id"] for t in act("mltoken_list", staff["admin"]["name"], owner_org=org["id"])] == [token["id"]]
    assert act("mltoken_revoke", sysadmin["name"], id=token["id"])["status"] == "revoked"  # the admin page's way


def test_an_admin_of_one_organization_cannot_touch_anothers_tokens(act: Callable, staff: dict, org: dict) -> None:
    other_admin = factories.User()
    other = organization(admin=other_admin)
    theirs = act("mltoken_create", other_admin["name"], owner_org=other["id"], name="theirs", roles=[PREDICT])
    admin = staff["admin"]["name"]
    with pytest.raises(NotAuthorized):
        act("mltoken_list", admin, owner_org=other["id"])
    with pytest.raises(NotAuthorized):
        act("mltoken_create", admin, owner_org=other["id"], name="sneaky", roles=[PREDICT])
    with pytest.raises(NotAuthorized):
        act("mltoken_revoke_all", admin, owner_org=other["id"])
    for action in ("mltoken_show", "mltoken_renew", "mltoken_revoke"):  # naming their own organization instead
        with pytest.raises(ObjectNotFound):
            act(action, admin, owner_org=org["id"], id=theirs["id"])
    assert act("mltoken_revoke_all", admin, owner_org=org["id"]) == []
    assert act("mltoken_show", other_admin["name"], owner_org=other["id"], id=theirs["id"])["status"] == "active"


def test_the_token_outlives_its_creators_departure_and_the_audit_names_each_actor(
    act: Callable, staff: dict, org: dict, sysadmin: dict
) -> None:
    admin, admin2 = staff["admin"]["name"], staff["admin2"]["name"]
    token = act("mltoken_create", admin, owner_org=org["id"], name="pipeline", roles=[PREDICT])
    own = act("mltoken_create", admin, name="own", roles=[PREDICT])

    act("organization_member_delete", admin2, id=org["id"], username=admin)  # removed from the organization
    with pytest.raises(NotAuthorized):
        act("mltoken_list", admin, owner_org=org["id"])
    with pytest.raises(ObjectNotFound):
        act("mltoken_revoke", admin, id=token["id"])
    assert act("mltoken_show", admin2, owner_org=org["id"], id=token["id"])["status"] == "active"

    act("user_delete", sysadmin["name"], id=admin)  # and then deleted: their own tokens go, not the organization's
    assert model.User.get(admin).state == "deleted"
    assert act("mltoken_show", sysadmin["name"], id=own["id"])["status"] == "revoked"
    renewed = act("mltoken_renew", admin2, owner_org=org["name"], id=token["id"])
    assert claims(renewed["token"])["owner_kind"] == "organization"
    act("mltoken_revoke", admin2, owner_org=org["name"], id=token["id"], reason="rotated")
    assert audit(token["id"]) == [
        ("create", admin, org["id"], "organization"),
        ("renew", admin2, org["id"], "organization"),
        ("revoke", admin2, org["id"], "organization"),
    ]


def test_the_token_limit_applies_per_organization(act: Callable, staff: dict, org: dict) -> None:
    """test.ini: max_tokens_per_owner = 3."""
    for i in range(3):
        act("mltoken_create", staff["admin"]["name"], owner_org=org["id"], name=f"t{i}", roles=[PREDICT])
    with pytest.raises(ValidationError) as full:
        act("mltoken_create", staff["admin2"]["name"], owner_org=org["id"], name="t3", roles=[PREDICT])
    assert "This organization already has 3 active tokens" in full.value.error_dict["name"][0]
    act("mltoken_create", staff["admin"]["name"], name="t0", roles=[PREDICT])  # the admin's own room is theirs


@pytest.mark.parametrize(
    "owner_org, error",
    [
        ("no-such-organization", NotAuthorized),
        ("bad\x00name", NotAuthorized),
        (["a", "list"], NotAuthorized),
        ("x" * 500, NotAuthorized),
    ],
)
def test_a_bad_owner_org_is_refused_and_changes_nothing(
    act: Callable, staff: dict, org: dict, owner_org: Any, error: type
) -> None:
    with pytest.raises(error):
        act("mltoken_create", staff["admin"]["name"], owner_org=owner_org, name="t", roles=[PREDICT])
    assert token_count() == 0


def test_a_sysadmin_gets_a_validation_error_or_not_found_for_a_bad_owner_org(act: Callable, sysadmin: dict) -> None:
    """Sysadmins pass CKAN's auth, so the action's own checks answer."""
    group = factories.Group()
    for owner_org in ("no-such-organization", group["id"]):
        with pytest.raises(ObjectNotFound):
            act("mltoken_create", sysadmin["name"], owner_org=owner_org, name="t", roles=[PREDICT])
    for owner_org in ("bad\x00name", ["a", "list"], ""):
        with pytest.raises(ValidationError) as caught:
            act("mltoken_create", sysadmin["name"], owner_org=owner_org, name="t", roles=[PREDICT])
        assert "owner_org" in caught.value.error_dict
    with pytest.raises(ValidationError) as both:
        act("mltoken_list", sysadmin["name"], owner_org=group["id"], all_users=True)
    assert both.value.error_dict["owner_org"] == ["Give owner_org alone, without user or all_users."]
    assert token_count() == 0


def test_deleting_or_purging_the_organization_revokes_its_tokens(
    act: Callable, staff: dict, org: dict, sysadmin: dict
) -> None:
    admin = staff["admin"]["name"]
    token = act("mltoken_create", admin, owner_org=org["id"], name="t", roles=[PREDICT])
    own = act("mltoken_create", admin, name="own", roles=[PREDICT])
    with pytest.raises(ValidationError):  # CKAN refuses: the organization still has a dataset
        act("organization_delete", admin, id=org["id"])
    assert act("mltoken_show", admin, owner_org=org["id"], id=token["id"])["status"] == "active"  # nothing half-done

    for dataset in model.Session.query(model.Package).filter_by(owner_org=org["id"], state="active").all():
        call_action("package_delete", id=dataset.id)
    act("organization_delete", admin, id=org["id"])
    revoked = act("mltoken_show", sysadmin["name"], id=token["id"])
    assert (revoked["status"], revoked["revoke_reason"]) == ("revoked", "organization deleted")
    assert act("mltoken_show", admin, id=own["id"])["status"] == "active"

    bare = factories.Organization(users=[{"name": admin, "capacity": "admin"}])
    publish_model("sentiment", "predict", name=f"m-{bare['name']}", owner_org=bare["id"])
    token = act("mltoken_create", admin, owner_org=bare["id"], name="t", roles=[PREDICT])
    call_action("package_delete", id=f"m-{bare['name']}")
    act("organization_purge", sysadmin["name"], id=bare["id"])  # purged while active
    assert act("mltoken_show", sysadmin["name"], id=token["id"])["revoke_reason"] == "organization deleted"
    assert model.Group.get(bare["id"]) is None


# The organization's page.


def org_url(org: dict[str, Any]) -> str:
    return f"/organization/ml-tokens/{org['name']}"


def test_the_tab_and_page_are_for_the_organizations_admins(
    visit: Callable[[dict[str, Any]], Visitor], staff: dict, org: dict
) -> None:
    admin = visit(staff["admin"])
    about = admin.get(f"/organization/about/{org['name']}").body
    assert f'href="{org_url(org)}"' in about and "ML API tokens" in about
    page = admin.get(org_url(org)).body
    assert 'id="mltoken-create-form"' in page and f'action="{org_url(org)}"' in page
    assert f'value="{PREDICT}"' in page and f'value="{TRAIN}"' in page and VISION not in page
    for who in ("editor", "member", "outsider"):
        visitor = visit(staff[who])
        assert f'href="{org_url(org)}"' not in visitor.get(f"/organization/about/{org['name']}").body
        visitor.get(org_url(org), status=403)
    admin.get("/organization/ml-tokens/no-such-org", status=404)


def test_admins_create_renew_and_revoke_on_the_page_with_csrf(
    visit: Callable[[dict[str, Any]], Visitor], staff: dict, org: dict
) -> None:
    admin, url = visit(staff["admin"]), org_url(org)
    page = admin.get(url)
    fields = {"_csrf_token": admin.csrf(page), "mltoken_form": admin.nonce(page), "name": "nightly", "roles": [PREDICT]}
    assert admin.app.post(url, data={**fields, "_csrf_token": "forged"}, status=400)
    assert admin.app.post(url, data={k: v for k, v in fields.items() if k != "_csrf_token"}, status=400)
    assert token_count() == 0

    posted = admin.app.post(url, data=fields, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["Location"].endswith(url)
    shown = admin.get(url)
    secret = html.unescape(re.search(r'id="mltoken-secret"[^>]*value="([^"]+)"', shown.body).group(1))
    assert claims(secret)["owner_kind"] == "organization" and "no-store" in shown.headers["Cache-Control"]
    [token] = service.lifecycle().list(Actor.operator(), org["id"], owner_kind="organization")
    assert token.name == "nightly"

    other = visit(staff["admin2"])  # another admin renews it
    renew = f"{url}/{token.id}/renew"
    confirm = other.get(renew)
    assert 'Renew the token "nightly"?' in confirm.body
    other.app.post(
        renew,
        data={"_csrf_token": other.csrf(confirm), "mltoken_form": other.nonce(confirm)},
        status=303,
        follow_redirects=False,
    )
    assert claims(html.unescape(re.search(r'id="mltoken-secret"[^>]*value="([^"]+)"', other.get(url).body).group(1)))

    revoke = f"{url}/{token.id}/revoke"
    other.app.post(revoke, data={"reason": "no csrf"}, status=400)
    done = other.post(revoke, {"reason": "leaked"}, csrf_from=revoke)
    assert "Token &#34;nightly&#34; revoked." in done.body and 'data-status="revoked"' in done.body
    assert [a for a, *_ in audit(token.id)] == ["create", "renew", "revoke"]


@pytest.mark.ckan_config("ckanext.mltokens.rotate_grace", "20m")
def test_admins_rotate_on_the_page_with_csrf_and_others_cannot(
    visit: Callable[[dict[str, Any]], Visitor], act: Callable, staff: dict, org: dict
) -> None:
    """Rotate, as on a user's page: confirmation, CSRF, the new token string shown once, the old one in its grace."""
    token = act("mltoken_create", staff["admin"]["name"], owner_org=org["id"], name="svc", roles=[PREDICT])
    admin, url = visit(staff["admin2"]), org_url(org)  # another admin than its creator
    rotate = f"{url}/{token['id']}/rotate"
    assert f'href="{rotate}"' in admin.get(url).body
    confirm = admin.get(rotate)
    assert 'Rotate the token "svc"?' in confirm.body and "keeps working for 20 minutes" in confirm.body
    assert f'action="{rotate}"' in confirm.body and f'href="{url}"' in confirm.body
    assert "no-store" in confirm.headers["Cache-Control"]
    fields = {"_csrf_token": admin.csrf(confirm), "mltoken_form": admin.nonce(confirm)}
    admin.app.post(rotate, data={"mltoken_form": fields["mltoken_form"]}, status=400)
    for who in ("editor", "member", "outsider"):
        visitor = visit(staff[who])
        visitor.get(rotate, status=403)
        assert (
            "Not authorized to see this page"
            in visitor.post(rotate, {}, status=403, csrf_from=page_url(staff[who])).body
        )
    assert act("mltoken_show", staff["admin"]["name"], owner_org=org["id"], id=token["id"])["renew_count"] == 0

    posted = admin.app.post(rotate, data=fields, follow_redirects=False)
    assert posted.status_code == 303 and posted.headers["Location"].endswith(url)
    page = admin.get(url)
    secret = secret_in(page)
    assert 'Token "svc" rotated' in page.body and 'id="mltoken-previous"' in page.body
    assert claims(secret)["owner_kind"] == "organization" and claims(secret)["token_id"] == token["id"]
    assert works(secret) and works(token["token"])  # the old one, for its grace
    assert secret not in admin.get(url).body  # shown once
    admin.app.post(rotate, data=fields)  # the same form again acts no more
    assert act("mltoken_show", staff["admin"]["name"], owner_org=org["id"], id=token["id"])["renew_count"] == 1
    assert [a for a, *_ in audit(token["id"])] == ["create", "rotate"]


def test_an_admin_of_another_organization_cannot_use_the_page_on_its_tokens(
    visit: Callable[[dict[str, Any]], Visitor], act: Callable, staff: dict, org: dict
) -> None:
    other_admin = factories.User(password=PASSWORD)
    other = organization(admin=other_admin)
    theirs = act("mltoken_create", other_admin["name"], owner_org=other["id"], name="theirs", roles=[PREDICT])
    admin = visit(staff["admin"])
    admin.get(org_url(other), status=403)
    revoke = f"{org_url(org)}/{theirs['id']}/revoke"  # their token, through the admin's own organization's page
    assert "Token not found." in admin.post(revoke, {"reason": "x"}, csrf_from=org_url(org)).body
    renew = f"{org_url(org)}/{theirs['id']}/renew"
    assert "Token not found." in admin.post(renew, {}, csrf_from=org_url(org)).body
    assert "Token not found." in admin.get(renew).body  # the confirmation page is not shown either
    rotate = f"{org_url(org)}/{theirs['id']}/rotate"
    assert "Token not found." in admin.post(rotate, {}, csrf_from=org_url(org)).body
    assert "Token not found." in admin.get(rotate).body
    assert act("mltoken_show", other_admin["name"], owner_org=other["id"], id=theirs["id"])["renew_count"] == 0
    assert act("mltoken_show", other_admin["name"], owner_org=other["id"], id=theirs["id"])["status"] == "active"


def test_hostile_organization_titles_and_token_names_are_escaped(
    visit: Callable[[dict[str, Any]], Visitor], act: Callable, staff: dict
) -> None:
    org = organization(admin=staff["admin"])
    call_action("organization_patch", id=org["id"], title=HOSTILE)
    act("mltoken_create", staff["admin"]["name"], owner_org=org["id"], name=HOSTILE, roles=[PREDICT])
    body = visit(staff["admin"]).get(org_url(org)).body
    assert "<script>alert" not in body
    escaped = "&lt;script&gt;alert(&#34;org&#34;)&lt;/script&gt; &amp; &#34;quotes&#34; &#39;single&#39;"
    assert body.count(escaped) >= 3  # the sidebar's title, the table's heading and the token's name
    assert f'data-name="{escaped}"' in body
