"""Access that follows CKAN (docs/catalogue-access.md): which roles a user may grant, and the
revocation of tokens whose owner lost access, each path ending at the gateway's validator.

One issuer + validator + nginx stack serves the module (its token store is CKAN's, through
`ckanext.mltokens.database_url`); every test publishes its own models (unique model ids).
"""

from __future__ import annotations

import html
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from ckan import model
from ckan.lib.navl.dictization_functions import DataError
from ckan.plugins.toolkit import NotAuthorized, ValidationError
from ckan.tests import factories
from ckan.tests.helpers import call_action
from ckanext.mltokens import access, catalogue, service
from ckanext.mltokens.cli import mltokens

from tests.support import pg
from tests.support.stack import PASSPHRASE, Stack
from token_service.store import Store

from .conftest import Visitor, page_url

pytestmark = [
    pytest.mark.usefixtures("with_plugins", "non_clean_db", "mltokens_store"),
    pytest.mark.ckan_config("ckanext.mltokens.access_mode", "ckan"),
    pytest.mark.ckan_config("ckan.auth.allow_dataset_collaborators", "true"),
]

Act = Callable[..., Any]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """issuer + validator + nginx + an echo upstream (any model id answers 200 once allowed)."""
    with pg.database(prefix="mlt_ckan_access") as db_url:
        store = Store(db_url)
        store.upgrade()
        store.dispose()
        with Stack(db_url, tmp_path_factory.mktemp("access"), gateway="nginx", upstream="wsgi") as running:
            yield running


@pytest.fixture(autouse=True)
def on_stack(stack: Stack, ckan_config: Any) -> Stack:
    ckan_config["ckanext.mltokens.database_url"] = stack.db_url
    ckan_config["ckanext.mltokens.issuer_url"] = stack.issuer_url
    ckan_config["ckanext.mltokens.key_passphrase"] = PASSPHRASE
    ckan_config["ckanext.mltokens.max_tokens_per_owner"] = 20
    return stack


def publish(org: dict[str, Any] | None, private: bool = False, title: str = "A model", **extra: Any) -> dict[str, Any]:
    """A dataset publishing a fresh model id with predict and train."""
    model_id = f"m-{uuid.uuid4().hex[:10]}"
    extras = [{"key": "model_id", "value": model_id}, {"key": "model_operations", "value": "predict, train"}]
    dataset = factories.Dataset(
        owner_org=org["id"] if org else None, private=private, title=title, extras=extras, **extra
    )
    return {**dataset, "model_id": model_id}


def role(dataset: dict[str, Any], operation: str) -> str:
    return f"model:{dataset['model_id']}:{operation}"


def offered(act: Act, user: dict[str, Any], *datasets: dict[str, Any]) -> dict[str, list[str]]:
    """The roles mltoken_roles_list offers `user` for these datasets' models, by model id."""
    groups = act("mltoken_roles_list", user["name"])
    wanted = {d["model_id"]: d for d in datasets}
    found = {g["model_id"]: g for g in groups if g["model_id"] in wanted}
    for model_id, group in found.items():
        assert group["dataset"] == {k: wanted[model_id][k] for k in ("id", "name", "title")}
    return {model_id: group["roles"] for model_id, group in found.items()}


def member(org: dict[str, Any], user: dict[str, Any], capacity: str) -> None:
    call_action("organization_member_create", id=org["id"], username=user["name"], role=capacity)


def call(stack: Stack, token: str, path: str) -> int:
    return requests.post(stack.gateway_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code


def refused_soon(stack: Stack, token: str, path: str) -> int:
    """The gateway's answer once the revocation had 5 s to reach the validator (LISTEN/NOTIFY)."""
    deadline = time.monotonic() + 5
    while (status := call(stack, token, path)) == 200 and time.monotonic() < deadline:
        time.sleep(0.05)
    return status


def status_of(token: dict[str, Any]) -> dict[str, Any]:
    return service.lifecycle().show(token["id"], service.Actor.operator()).as_dict()


# -- which roles a user may grant --------------------------------------------------------


def test_grantable_roles_follow_ckans_authorization_on_the_dataset(act: Act) -> None:
    org, other_org = factories.Organization(), factories.Organization()
    private = publish(org, private=True, title="Private model")
    public = publish(other_org, title="Public model")
    people = {
        name: factories.User() for name in ("outsider", "member", "editor", "admin", "coll_member", "coll_editor")
    }
    for capacity in ("member", "editor", "admin"):
        member(org, people[capacity], capacity)
    call_action("package_collaborator_create", id=private["id"], user_id=people["coll_member"]["id"], capacity="member")
    call_action("package_collaborator_create", id=private["id"], user_id=people["coll_editor"]["id"], capacity="editor")
    sysadmin = factories.Sysadmin()
    both = {
        private["model_id"]: [role(private, "predict"), role(private, "train")],
        public["model_id"]: [role(public, "predict")],
    }

    assert offered(act, people["outsider"], private, public) == {public["model_id"]: [role(public, "predict")]}
    for reader in ("member", "coll_member"):
        assert offered(act, people[reader], private, public) == {
            private["model_id"]: [role(private, "predict")],
            public["model_id"]: [role(public, "predict")],
        }
    for updater in ("editor", "admin", "coll_editor"):
        assert offered(act, people[updater], private, public) == both
    assert offered(act, sysadmin, private, public) == {
        private["model_id"]: both[private["model_id"]],
        public["model_id"]: [role(public, "predict"), role(public, "train")],
    }


def test_a_deleted_dataset_or_one_claiming_a_taken_model_id_grants_nothing(act: Act) -> None:
    org = factories.Organization()
    dataset = publish(org)
    with pytest.raises(ValidationError) as raised:
        factories.Dataset(
            owner_org=org["id"],
            extras=[{"key": "model_id", "value": dataset["model_id"]}, {"key": "model_operations", "value": "train"}],
        )
    assert "model_id" in raised.value.error_dict
    editor = factories.User()
    member(org, editor, "editor")
    assert offered(act, editor, dataset) == {dataset["model_id"]: [role(dataset, "predict"), role(dataset, "train")]}
    call_action("package_delete", id=dataset["id"])
    assert offered(act, editor, dataset) == {}


def test_a_refusal_does_not_tell_whether_a_private_dataset_publishes_a_model_id(act: Act) -> None:
    """Access is checked before the model id's uniqueness: the anonymous and an outsider are refused
    alike for a model id a private dataset publishes and for one nobody does."""
    org = factories.Organization()
    hidden, theirs, outsider = publish(org, private=True), publish(org), factories.User()
    for model_id in (hidden["model_id"], f"m-{uuid.uuid4().hex[:10]}"):
        extras = [{"key": "model_id", "value": model_id}, {"key": "model_operations", "value": "predict"}]
        with pytest.raises(NotAuthorized):
            act("package_create", None, name=f"probe-{uuid.uuid4().hex[:8]}", extras=extras)
        with pytest.raises(NotAuthorized):
            act("package_update", outsider["name"], id=theirs["id"], name=theirs["name"], extras=extras)


def test_extras_that_are_not_a_list_are_ckans_error_not_a_crash(act: Act) -> None:
    admin = factories.Sysadmin()
    with pytest.raises((ValidationError, DataError)):
        act("package_create", admin["name"], name=f"x-{uuid.uuid4().hex[:8]}", extras=5)


def test_create_refuses_a_role_the_user_may_not_grant_and_changes_nothing(act: Act) -> None:
    dataset = publish(factories.Organization())
    user = factories.User()
    with pytest.raises(ValidationError) as raised:
        act("mltoken_create", user["name"], name="too much", roles=[role(dataset, "predict"), role(dataset, "train")])
    assert raised.value.error_dict["__code"] == "roles_not_allowed"
    assert role(dataset, "train") in raised.value.error_dict["roles"][0]
    assert act("mltoken_list", user["name"]) == []
    made = act("mltoken_create", user["name"], name="enough", roles=[role(dataset, "predict")])
    assert made["roles"] == [role(dataset, "predict")]


def test_in_mode_both_a_role_needs_ckan_and_the_issuer(act: Act, ckan_config: Any) -> None:
    ckan_config["ckanext.mltokens.access_mode"] = "both"  # (a test's mark would lose to the module's)
    org = factories.Organization()
    first, second = publish(org), publish(org)
    editor = factories.User()
    member(org, editor, "editor")
    ckan_config["ckanext.mltokens.grantable_roles"] = [role(first, "predict"), role(second, "train"), "model:x:predict"]
    assert offered(act, editor, first, second) == {
        first["model_id"]: [role(first, "predict")],
        second["model_id"]: [role(second, "train")],
    }
    assert "model:x:predict" not in {r for g in act("mltoken_roles_list", editor["name"]) for r in g["roles"]}
    with pytest.raises(ValidationError):
        act("mltoken_create", editor["name"], name="n", roles=[role(first, "train")])


def test_in_mode_issuer_ckan_does_not_bound_the_roles(act: Act, ckan_config: Any) -> None:
    ckan_config["ckanext.mltokens.access_mode"] = "issuer"
    dataset = publish(factories.Organization(), private=True, title="Secret title")
    user = factories.User()
    ckan_config["ckanext.mltokens.grantable_roles"] = [role(dataset, "train")]
    groups = [g for g in act("mltoken_roles_list", user["name"]) if g["model_id"] == dataset["model_id"]]
    assert groups == [{"model_id": dataset["model_id"], "roles": [role(dataset, "train")], "dataset": None}]


def test_the_token_form_groups_roles_by_model_and_escapes_hostile_titles(app: Any, act: Act) -> None:
    hostile = "<script>alert('x')</script>\"><img src=x onerror=alert(1)>"
    org = factories.Organization()
    dataset = publish(org, private=True, title=hostile)
    password = "Correct-Horse-123"
    user = factories.User(password=password)
    member(org, user, "editor")
    form = Visitor(app).login(user).get(page_url(user)).body
    group = form[form.index(f'data-model-id="{dataset["model_id"]}"') :]
    group = group[: group.index("</fieldset>")].split('class="mltoken-role-group', 1)[0]
    assert hostile not in form and "<script>alert" not in form and "<img src=x" not in form
    assert hostile in html.unescape(group)  # shown, as text
    assert f'value="{role(dataset, "predict")}"' in group and f'value="{role(dataset, "train")}"' in group


# -- when access changes in CKAN -----------------------------------------------------------


RevokedFor = Callable[..., None]


@pytest.fixture
def revoked_for(stack: Stack, act: Act) -> RevokedFor:
    """`revoked_for(user, roles, change, *words)`: a token of `user` with `roles` works; after `change`
    it is revoked with a reason naming `words`, and refused."""

    def check(user: dict, roles: list[str], change: Callable[[], Any], *words: str) -> None:
        token = act("mltoken_create", user["name"], name=f"t-{uuid.uuid4().hex[:6]}", roles=roles)
        path = "/v1/models/{}/{}".format(*roles[-1].split(":")[1:])
        assert call(stack, token["token"], path) == 200
        change()
        after = status_of(token)
        assert after["status"] == "revoked", after
        assert after["revoked_by"] == "operator"
        for word in words:
            assert word in after["revoke_reason"], after["revoke_reason"]
        assert refused_soon(stack, token["token"], path) == 401

    return check


def test_removed_from_the_organization(
    stack: Stack, act: Act, revoked_for: RevokedFor, sysadmin: dict[str, Any]
) -> None:
    org = factories.Organization()
    private, public = publish(org, private=True), publish(org)
    user, colleague = factories.User(), factories.User()
    member(org, user, "member")
    member(org, colleague, "member")
    kept = act("mltoken_create", user["name"], name="public", roles=[role(public, "predict")])
    theirs = act("mltoken_create", colleague["name"], name="theirs", roles=[role(private, "predict")])

    revoked_for(
        user,
        [role(private, "predict")],
        # (as a user: CKAN's organization_member_delete checks its inner member_delete's auth)
        lambda: act("organization_member_delete", sysadmin["name"], id=org["id"], username=user["name"]),
        f"user {user['name']} removed from organization {org['name']}",
        f"dataset {private['name']}",
    )
    assert status_of(kept)["status"] == "active"  # the public model: still readable
    assert status_of(theirs)["status"] == "active"  # another user's token: untouched
    assert call(stack, kept["token"], f"/v1/models/{public['model_id']}/predict") == 200


def test_capacity_lowered_in_the_organization(revoked_for: RevokedFor) -> None:
    org = factories.Organization()
    dataset = publish(org)
    user = factories.User()
    member(org, user, "editor")
    revoked_for(
        user,
        [role(dataset, "predict"), role(dataset, "train")],
        lambda: member(org, user, "member"),
        f"user {user['name']} now member of organization {org['name']}",
        role(dataset, "train"),
    )


def test_collaborator_removed_or_lowered(revoked_for: RevokedFor) -> None:
    dataset = publish(factories.Organization(), private=True)
    user, other = factories.User(), factories.User()
    call_action("package_collaborator_create", id=dataset["id"], user_id=user["id"], capacity="member")
    call_action("package_collaborator_create", id=dataset["id"], user_id=other["id"], capacity="editor")
    revoked_for(
        user,
        [role(dataset, "predict")],
        lambda: call_action("package_collaborator_delete", id=dataset["id"], user_id=user["id"]),
        "no longer a collaborator",
        f"dataset {dataset['name']}",
    )
    revoked_for(
        other,
        [role(dataset, "train")],
        lambda: call_action("package_collaborator_create", id=dataset["id"], user_id=other["id"], capacity="member"),
        f"user {other['name']} now member of dataset {dataset['name']}",
    )


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda d: call_action("package_patch", id=d["id"], private=True), "made private"),
        (lambda d: call_action("package_delete", id=d["id"]), "state now deleted"),
        (lambda d: call_action("dataset_purge", id=d["id"]), "purged"),
        (lambda d: call_action("package_patch", id=d["id"], extras=[]), "model fields removed"),
        (lambda d: call_action("bulk_update_private", datasets=[d["id"]], org_id=d["owner_org"]), "made private"),
    ],
    ids=["made-private", "deleted", "purged", "model-field-removed", "bulk-private"],
)
def test_dataset_changes(revoked_for: RevokedFor, change: Callable[[dict], Any], words: str) -> None:
    dataset = publish(factories.Organization())
    user = factories.User()
    revoked_for(user, [role(dataset, "predict")], lambda: change(dataset), words, dataset["name"])


def test_an_ordinary_edit_revokes_nothing(stack: Stack, act: Act) -> None:
    dataset = publish(factories.Organization())
    user = factories.User()
    token = act("mltoken_create", user["name"], name="kept", roles=[role(dataset, "predict")])
    call_action("package_patch", id=dataset["id"], notes="a better description")
    assert status_of(token)["status"] == "active"


def test_a_models_owners_are_judged_by_standing_each_as_ckan_judges_them(
    stack: Stack, act: Act, sysadmin: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Making a dataset private judges all its token owners with CKAN asked once per standing
    (sysadmin, memberships of the organization and its parent, collaboration), not once per
    owner; each owner keeps exactly what CKAN's own per-user check lets them grant."""
    parent, org = factories.Organization(), factories.Organization()
    # CKAN's hierarchy: a member row of the child naming its parent (`Group.get_parent_groups`)
    call_action("member_create", id=org["id"], object=parent["id"], object_type="group", capacity="parent")
    dataset = publish(org)
    predict, train = role(dataset, "predict"), role(dataset, "train")
    people: dict[str, tuple[dict[str, Any], list[str]]] = {}

    def person(label: str, roles: list[str], user: dict[str, Any] | None = None) -> dict[str, Any]:
        user = user or factories.User()
        people[label] = (user, roles)
        return user

    for i in range(4):
        member(org, person(f"member{i}", [predict]), "member")
        person(f"outsider{i}", [predict])
    for i in range(2):
        member(org, person(f"editor{i}", [predict, train]), "editor")
    member(parent, person("parent-admin", [predict, train]), "admin")  # roles cascade to the child
    member(parent, person("parent-member", [predict]), "member")  # a parent's member does not
    collaborators = {"collaborator": "member", "collaborating-editor": "editor"}
    for label, capacity in collaborators.items():
        user = person(label, [predict, train] if capacity == "editor" else [predict])
        call_action("package_collaborator_create", id=dataset["id"], user_id=user["id"], capacity=capacity)
    person("sysadmin", [predict, train], factories.Sysadmin())
    tokens = {
        label: act("mltoken_create", user["name"], name=label, roles=roles) for label, (user, roles) in people.items()
    }

    asked = []
    allowed = access._allowed
    monkeypatch.setattr(
        access, "_allowed", lambda action, user, id_: asked.append(user.name) or allowed(action, user, id_)
    )
    call_action("package_patch", id=dataset["id"], private=True)
    monkeypatch.setattr(access, "_allowed", allowed)  # (not undo(): ckan_config's settings are monkeypatched too)

    # Each owner, asked alone as before: what CKAN lets them grant now.
    published = access.model_datasets([dataset["model_id"]])[dataset["model_id"]]
    expected = {
        label: set(roles) <= access.dataset_roles(model.User.get(user["id"]), published)
        for label, (user, roles) in people.items()
    }
    assert {label: status_of(token)["status"] == "active" for label, token in tokens.items()} == expected
    assert expected == {label: not label.startswith(("outsider", "parent-member")) for label in people}
    assert len(set(asked)) <= 8 < len(people), asked  # one per standing: 8 kinds of owner above
    assert refused_soon(stack, tokens["outsider3"]["token"], f"/v1/models/{dataset['model_id']}/predict") == 401
    assert call(stack, tokens["member3"]["token"], f"/v1/models/{dataset['model_id']}/predict") == 200


def test_an_unowned_dataset_is_judged_owner_by_owner() -> None:
    """Whose standing decides: only an owned dataset's (an unowned one's rules read its creator)."""
    api = catalogue.ModelApi("m", ("predict",))
    assert access._standing_decides(access.ModelDataset("d", "d", "D", "org-id", api))
    assert not access._standing_decides(access.ModelDataset("d", "d", "D", None, api))


def test_user_deleted_by_state_or_losing_sysadmin_rights(
    act: Act, revoked_for: RevokedFor, sysadmin: dict[str, Any]
) -> None:
    dataset = publish(factories.Organization(), private=True)
    demoted, user = factories.Sysadmin(), factories.User()
    call_action("package_collaborator_create", id=dataset["id"], user_id=user["id"], capacity="member")
    revoked_for(
        demoted,
        [role(dataset, "train")],
        lambda: act("user_patch", sysadmin["name"], id=demoted["id"], sysadmin=False),
        f"user {demoted['name']} changed",
    )
    revoked_for(
        user,
        [role(dataset, "predict")],
        lambda: act("user_patch", sysadmin["name"], id=user["id"], state="deleted"),
        f"user {user['name']} is deleted",
    )


def test_renewal_and_reconcile_after_a_change_made_outside_ckans_actions(stack: Stack, act: Act, cli: Any) -> None:
    org = factories.Organization()
    dataset = publish(org, private=True)
    user = factories.User()
    member(org, user, "member")
    token = act("mltoken_create", user["name"], name="sql", roles=[role(dataset, "predict")])
    model.Session.execute(
        model.member_table.update()
        .where(model.member_table.c.table_id == user["id"], model.member_table.c.group_id == org["id"])
        .values(state="deleted")
    )
    model.Session.commit()

    with pytest.raises(ValidationError) as raised:
        act("mltoken_renew", user["name"], id=token["id"])
    assert raised.value.error_dict["__code"] == "roles_not_allowed"
    assert status_of(token)["renew_count"] == 0

    # The `mltokens` group itself: `ckan mltokens` would reload test.ini over this test's config.
    dry = cli.invoke(mltokens, ["reconcile", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert f"would revoke {token['id']}" in dry.output and status_of(token)["status"] == "active"
    done = cli.invoke(mltokens, ["reconcile"])
    assert done.exit_code == 0, done.output
    assert f"revoked {token['id']}" in done.output
    assert "ckan mltokens reconcile" in status_of(token)["revoke_reason"]
    again = cli.invoke(mltokens, ["reconcile"])
    assert again.exit_code == 0 and token["id"] not in again.output and "0 revoked" in again.output
    assert refused_soon(stack, token["token"], f"/v1/models/{dataset['model_id']}/predict") == 401


def test_an_organizations_token_follows_the_organizations_own_datasets(
    stack: Stack, act: Act, sysadmin: dict[str, Any]
) -> None:
    """Organization tokens (organizations.py) hold every role of their organization's models, so
    what revokes a person's token does not revoke theirs: their creator leaving, the dataset made
    private. The dataset moving to another organization does."""
    org, elsewhere = factories.Organization(), factories.Organization()
    dataset = publish(org)
    maker, other_admin = factories.User(), factories.User()
    member(org, maker, "admin")
    member(org, other_admin, "admin")
    roles = [role(dataset, "predict"), role(dataset, "train")]
    assert [g["roles"] for g in act("mltoken_roles_list", maker["name"], owner_org=org["name"])] == [roles]
    token = act("mltoken_create", maker["name"], owner_org=org["name"], name="pipeline", roles=roles)
    path = f"/v1/models/{dataset['model_id']}/train"

    act("organization_member_delete", sysadmin["name"], id=org["id"], username=maker["name"])
    call_action("package_patch", id=dataset["id"], private=True)
    assert status_of(token)["status"] == "active"
    renewed = act("mltoken_renew", other_admin["name"], owner_org=org["name"], id=token["id"])
    assert call(stack, renewed["token"], path) == 200

    call_action("package_patch", id=dataset["id"], owner_org=elsewhere["id"])
    after = status_of(token)
    assert after["status"] == "revoked" and f"dataset {dataset['name']}" in after["revoke_reason"], after
    assert refused_soon(stack, renewed["token"], path) == 401
