"""GET/PATCH /me, preferences, and who may read whom."""
from __future__ import annotations

import pytest

from tests.functions.identity_support import ADMIN_EMAIL, bearer


def error(response) -> dict:
    body = response.get_json()
    assert set(body) == {"error"}, body
    return body["error"]


def test_me_is_created_on_first_access_from_the_token(users):
    user, tokens = users.auth.user("amy@example.com")
    response = users.client.get("/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    profile = response.get_json()
    assert profile["id"] == user["id"] and profile["email"] == "amy@example.com"
    assert profile["roles"] == ["user"] and profile["display_name"] is None
    assert profile["preferences"] == {"language": "en", "default_model": None, "temperature": 0.7, "max_tokens": 512, "system_prompt": None}
    assert users.client.get("/me", headers=bearer(tokens["access_token"])).get_json() == profile


def test_patch_me_updates_the_display_name(users):
    headers = users.login("ben@example.com")
    response = users.client.patch("/me", json={"display_name": "  Ben  "}, headers=headers)
    assert response.status_code == 200 and response.get_json()["display_name"] == "Ben"
    assert users.client.get("/me", headers=headers).get_json()["display_name"] == "Ben"


@pytest.mark.parametrize(
    "payload, field",
    [({"email": "x@example.com"}, "email"), ({}, "body"), ({"display_name": "x" * 101}, "display_name"), ({"display_name": "   "}, "display_name")],
)
def test_patch_me_rejects_unknown_empty_or_invalid_fields(users, payload, field):
    response = users.client.patch("/me", json=payload, headers=users.login("cal@example.com"))
    assert response.status_code == 422
    assert field in [d["field"] for d in error(response)["details"]]


def test_preferences_round_trip(users):
    headers = users.login("dee@example.com")
    prefs = {"language": "fr-FR", "default_model": "smollm2-135m", "temperature": 1.2, "max_tokens": 4096, "system_prompt": "Be brief."}
    response = users.client.put("/me/preferences", json=prefs, headers=headers)
    assert response.status_code == 200 and response.get_json() == prefs
    assert users.client.get("/me/preferences", headers=headers).get_json() == prefs
    assert users.client.get("/me", headers=headers).get_json()["preferences"] == prefs


def test_put_replaces_the_whole_preferences_document(users):
    headers = users.login("eve@example.com")
    users.client.put("/me/preferences", json={"language": "de", "temperature": 0.1}, headers=headers)
    stored = users.client.put("/me/preferences", json={"max_tokens": 64}, headers=headers).get_json()
    assert stored == {"language": "en", "default_model": None, "temperature": 0.7, "max_tokens": 64, "system_prompt": None}


@pytest.mark.parametrize(
    "prefs, field",
    [
        ({"language": "english language"}, "language"),
        ({"language": "e"}, "language"),
        ({"language": "fr_FR"}, "language"),
        ({"default_model": "m" * 101}, "default_model"),
        ({"temperature": 2.1}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 4097}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"system_prompt": "s" * 4001}, "system_prompt"),
        ({"theme": "dark"}, "theme"),
    ],
)
def test_invalid_preferences_are_422_with_field_details_and_nothing_is_stored(users, prefs, field):
    headers = users.login("fay@example.com")
    response = users.client.put("/me/preferences", json=prefs, headers=headers)
    assert response.status_code == 422
    assert field in [d["field"] for d in error(response)["details"]]
    assert users.client.get("/me/preferences", headers=headers).get_json()["language"] == "en"


def test_writes_invalidate_the_cached_profile(users):
    headers = users.login("gus@example.com")
    sub = users.client.get("/me", headers=headers).get_json()["id"]
    cache = users.module.service().cache
    assert cache.get(sub) is not None  # served from the cache from now on
    users.client.put("/me/preferences", json={"language": "es"}, headers=headers)
    assert users.client.get("/me/preferences", headers=headers).get_json()["language"] == "es"
    users.client.patch("/me", json={"display_name": "Gus"}, headers=headers)
    assert users.client.get("/me", headers=headers).get_json()["display_name"] == "Gus"
    assert cache.get(sub).display_name == "Gus"


def test_profile_reads_are_served_from_the_cache(users):
    headers = users.login("hal@example.com")
    sub = users.client.get("/me", headers=headers).get_json()["id"]
    # Change the row behind the cache's back: a cached read does not see it until invalidated.
    users.module.service().store.db.execute("UPDATE users_profiles SET display_name = 'sneaky' WHERE id = :id", {"id": sub})
    assert users.client.get("/me", headers=headers).get_json()["display_name"] is None
    users.module.service().cache.invalidate(sub)
    assert users.client.get("/me", headers=headers).get_json()["display_name"] == "sneaky"


def test_requests_without_a_valid_token_are_401(users):
    assert error(users.client.get("/me"))["code"] == "missing_token"
    assert users.client.get("/me/preferences", headers=bearer("not.a.jwt")).status_code == 401


def test_a_token_revoked_at_auth_is_refused_by_users(users):
    _, tokens = users.auth.user("ida@example.com")
    headers = bearer(tokens["access_token"])
    assert users.client.get("/me/preferences", headers=headers).status_code == 200
    assert users.auth.client.post("/revoke", data={"token": tokens["access_token"]}).status_code == 200
    response = users.client.get("/me/preferences", headers=headers)
    assert response.status_code == 401 and error(response)["message"] == "the access token has been revoked"


def test_reading_another_users_profile_is_403_but_self_is_fine(users):
    joe, joe_tokens = users.auth.user("joe@example.com")
    kay, _ = users.auth.user("kay@example.com")
    headers = bearer(joe_tokens["access_token"])
    assert users.client.get(f"/users/{joe['id']}", headers=headers).get_json()["email"] == "joe@example.com"
    forbidden = users.client.get(f"/users/{kay['id']}", headers=headers)
    assert forbidden.status_code == 403 and error(forbidden)["code"] == "forbidden"
    # Unknown ids are 403 too for non-admins: no probing which users exist.
    assert users.client.get("/users/does-not-exist", headers=headers).status_code == 403


def test_admins_read_any_profile_and_unknown_ids_are_404(users):
    kay, kay_tokens = users.auth.user("kay@example.com")
    users.client.get("/me", headers=bearer(kay_tokens["access_token"]))
    admin = users.login(ADMIN_EMAIL)
    response = users.client.get(f"/users/{kay['id']}", headers=admin)
    assert response.status_code == 200 and response.get_json()["email"] == "kay@example.com"
    missing = users.client.get("/users/does-not-exist", headers=admin)
    assert missing.status_code == 404 and error(missing)["code"] == "not_found"


def test_admin_listing_pages_in_a_stable_order(users):
    admin = users.login(ADMIN_EMAIL)
    users.client.get("/me", headers=admin)
    for n in range(4):
        users.client.get("/me", headers=users.login(f"user{n}@example.com"))
    seen, cursor, pages = [], None, 0
    while True:
        response = users.client.get("/users", query_string={"limit": 2, **({"cursor": cursor} if cursor else {})}, headers=admin)
        assert response.status_code == 200
        page = response.get_json()
        assert len(page["items"]) <= 2
        seen += [item["email"] for item in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 5 and len(set(seen)) == 5
    everything = users.client.get("/users", query_string={"limit": 100}, headers=admin).get_json()
    assert [item["email"] for item in everything["items"]] == seen and everything["next_cursor"] is None


@pytest.mark.parametrize("query, field", [({"limit": 0}, "limit"), ({"limit": 101}, "limit"), ({"limit": "many"}, "limit"), ({"cursor": "garbage!"}, "cursor"), ({"sort": "email"}, "sort")])
def test_admin_listing_validates_its_query(users, query, field):
    response = users.client.get("/users", query_string=query, headers=users.login(ADMIN_EMAIL))
    assert response.status_code == 422
    assert field in [d["field"] for d in error(response)["details"]]


def test_listing_users_is_admin_only(users):
    response = users.client.get("/users", headers=users.login("lou@example.com"))
    assert response.status_code == 403 and error(response)["code"] == "forbidden"


def test_unknown_route_and_wrong_method(users):
    headers = users.login("max@example.com")
    assert error(users.client.get("/nope", headers=headers))["code"] == "not_found"
    response = users.client.delete("/me", headers=headers)
    assert response.status_code == 405 and error(response)["code"] == "method_not_allowed"


def test_malformed_json_wrong_type_and_oversized_bodies(users):
    headers = users.login("ned@example.com")
    assert users.client.put("/me/preferences", data="{", content_type="application/json", headers=headers).status_code == 400
    assert users.client.put("/me/preferences", data="language=en", content_type="application/x-www-form-urlencoded", headers=headers).status_code == 415
    big = users.client.put("/me/preferences", json={"system_prompt": "x" * 2_000_000}, headers=headers)
    assert big.status_code == 413 and error(big)["code"] == "payload_too_large"
