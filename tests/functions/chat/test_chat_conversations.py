"""Conversations over HTTP: create, list (pages, own only), read, rename, delete, and who may."""
from __future__ import annotations

import pytest

from tests.functions.chat.chat_support import Hold

BAD_IDS = ["not-an-id", "%7B%22%24gt%22%3A%22%22%7D", "'%20OR%20'1'%3D'1", "A" * 32, "0" * 31, "0" * 33, "..%2F..%2Fetc"]


def test_a_conversation_is_created_read_renamed_and_deleted(harness):
    alice = harness.login("alice")
    created = harness.chat.post("/conversations", json={"title": "Trip", "system_prompt": "Be brief."}, headers=alice)
    assert created.status_code == 201
    conv = created.get_json()
    assert created.headers["Location"] == f"/function/chat/conversations/{conv['id']}"
    assert (conv["title"], conv["system_prompt"], conv["model"]) == ("Trip", "Be brief.", None)

    got = harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()
    assert got["id"] == conv["id"] and got["messages"] == []

    renamed = harness.chat.patch(f"/conversations/{conv['id']}", json={"title": "Paris trip"}, headers=alice)
    assert renamed.status_code == 200 and renamed.get_json()["title"] == "Paris trip"
    assert renamed.get_json()["system_prompt"] == "Be brief."
    cleared = harness.chat.patch(f"/conversations/{conv['id']}", json={"system_prompt": None}, headers=alice)
    assert cleared.get_json()["system_prompt"] is None

    deleted = harness.chat.delete(f"/conversations/{conv['id']}", headers=alice)
    assert deleted.status_code == 204 and deleted.data == b""
    assert harness.chat.get(f"/conversations/{conv['id']}", headers=alice).status_code == 404


def test_deleting_a_conversation_deletes_its_messages(harness):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    reply = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "hi"}, headers=alice)
    assert reply.status_code == 201
    message_id = reply.get_json()["id"]
    assert harness.chat.delete(f"/conversations/{conv['id']}", headers=alice).status_code == 204
    from functions.chat import runtime

    assert runtime.service().store.find_by_request_id(message_id) is None


def test_the_list_is_own_only_newest_first_in_pages(harness):
    alice, bob = harness.login("alice"), harness.login("bob")
    mine = [harness.new_conversation(alice, title=f"a{i}")["id"] for i in range(5)]
    harness.new_conversation(bob, title="bob's")
    pages, cursor = [], None
    while True:
        query = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = harness.chat.get("/conversations", query_string=query, headers=alice)
        assert page.status_code == 200
        body = page.get_json()
        pages.append([c["title"] for c in body["data"]])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [["a4", "a3"], ["a2", "a1"], ["a0"]]
    bobs = harness.chat.get("/conversations", headers=bob).get_json()
    assert [c["title"] for c in bobs["data"]] == ["bob's"] and bobs["next_cursor"] is None
    assert len(mine) == 5


@pytest.mark.parametrize("query", [{"limit": "0"}, {"limit": "101"}, {"limit": "x"}])
def test_a_bad_page_size_is_refused(harness, query):
    alice = harness.login("alice")
    response = harness.chat.get("/conversations", query_string=query, headers=alice)
    assert response.status_code == 422 and response.get_json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("cursor", ["garbage", "eyIkZ3QiOiIifQ", "W3siJGd0IjoiIn0sIiJd"])
def test_a_forged_cursor_is_a_bad_request(harness, cursor):
    alice = harness.login("alice")
    response = harness.chat.get("/conversations", query_string={"cursor": cursor}, headers=alice)
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_cursor"


def test_another_users_conversation_is_not_found_on_every_route(harness):
    alice, bob = harness.login("alice"), harness.login("bob")
    harness.worker.script = lambda request: Hold()
    conv = harness.new_conversation(alice, title="private")
    pending = harness.chat.post(f"/conversations/{conv['id']}/messages", json={"content": "secret"},
                                headers={**alice, "Prefer": "respond-async"})
    assert pending.status_code == 202
    message_id = pending.get_json()["id"]
    cid = conv["id"]
    attempts = [
        harness.chat.get(f"/conversations/{cid}", headers=bob),
        harness.chat.patch(f"/conversations/{cid}", json={"title": "mine"}, headers=bob),
        harness.chat.delete(f"/conversations/{cid}", headers=bob),
        harness.chat.post(f"/conversations/{cid}/messages", json={"content": "hi"}, headers=bob),
        harness.chat.get(f"/conversations/{cid}/messages/{message_id}", headers=bob),
        harness.chat.post("/chat", json={"message": "hi", "conversation_id": cid}, headers=bob),
    ]
    for response in attempts:
        assert response.status_code == 404, response.get_json()
        assert response.get_json()["error"]["code"] == "not_found"
        assert "secret" not in response.get_data(as_text=True)
    still = harness.chat.get(f"/conversations/{cid}", headers=alice).get_json()
    assert still["title"] == "private" and [m["content"] for m in still["messages"]] == ["secret", ""]
    assert len(harness.worker.wait_for(1)) == 1  # bob's attempts queued nothing


@pytest.mark.parametrize("bad", BAD_IDS)
def test_ids_that_are_not_ids_are_a_bad_request_on_every_route(harness, bad):
    alice = harness.login("alice")
    conv = harness.new_conversation(alice)
    attempts = [
        harness.chat.get(f"/conversations/{bad}", headers=alice),
        harness.chat.patch(f"/conversations/{bad}", json={"title": "x"}, headers=alice),
        harness.chat.delete(f"/conversations/{bad}", headers=alice),
        harness.chat.post(f"/conversations/{bad}/messages", json={"content": "x"}, headers=alice),
        harness.chat.get(f"/conversations/{conv['id']}/messages/{bad}", headers=alice),
        harness.chat.post("/chat", json={"message": "x", "conversation_id": bad.replace("%", "")}, headers=alice),
    ]
    for response in attempts:
        # a "/" decoded into the path can leave no route at all (404); never a 5xx, never a match
        assert response.status_code in (400, 404), (response.status_code, response.get_json())
        if response.status_code == 400:
            assert response.get_json()["error"]["code"] == "invalid_id"
    assert harness.chat.get(f"/conversations/{conv['id']}", headers=alice).get_json()["messages"] == []


def test_a_query_operator_as_conversation_id_is_refused(harness):
    alice = harness.login("alice")
    harness.new_conversation(alice)
    response = harness.chat.post("/chat", json={"message": "x", "conversation_id": {"$gt": ""}}, headers=alice)
    assert response.status_code == 422
    assert len(harness.chat.get("/conversations", headers=alice).get_json()["data"]) == 1


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer not.a.jwt"}, {"Authorization": "Basic YTpi"}])
def test_without_a_valid_token_every_route_is_unauthorized(harness, headers):
    alice = harness.login("alice")
    cid = harness.new_conversation(alice)["id"]
    attempts = [
        harness.chat.post("/conversations", json={}, headers=headers),
        harness.chat.get("/conversations", headers=headers),
        harness.chat.get(f"/conversations/{cid}", headers=headers),
        harness.chat.patch(f"/conversations/{cid}", json={"title": "x"}, headers=headers),
        harness.chat.delete(f"/conversations/{cid}", headers=headers),
        harness.chat.post(f"/conversations/{cid}/messages", json={"content": "x"}, headers=headers),
        harness.chat.post("/chat", json={"message": "x"}, headers=headers),
    ]
    for response in attempts:
        assert response.status_code == 401
        assert "Bearer" in response.headers["WWW-Authenticate"]
        assert response.get_json()["error"]["code"] in ("missing_token", "invalid_token", "unauthorized")


def test_a_revoked_token_is_unauthorized(harness):
    email = "carol@example.com"
    user, tokens = harness.auth.user(email)
    headers = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert harness.chat.get("/conversations", headers=headers).status_code == 200
    revoked = harness.auth.client.post("/revoke", data={"token": tokens["access_token"]})
    assert revoked.status_code == 200
    import time

    time.sleep(0.1)
    assert harness.chat.get("/conversations", headers=headers).status_code == 401


@pytest.mark.parametrize("body", [{"title": "x" * 201}, {"model": "bad model!"}, {"unknown": 1}])
def test_invalid_conversation_fields_are_refused(harness, body):
    alice = harness.login("alice")
    response = harness.chat.post("/conversations", json=body, headers=alice)
    assert response.status_code == 422 and response.get_json()["error"]["details"]


def test_an_empty_patch_is_refused(harness):
    alice = harness.login("alice")
    cid = harness.new_conversation(alice)["id"]
    assert harness.chat.patch(f"/conversations/{cid}", json={}, headers=alice).status_code == 422


def test_malformed_json_is_a_bad_request_not_a_crash(harness):
    alice = harness.login("alice")
    response = harness.chat.post("/conversations", data=b"{nope", headers={**alice, "Content-Type": "application/json"})
    assert response.status_code == 400 and response.get_json()["error"]["code"] == "invalid_json"
