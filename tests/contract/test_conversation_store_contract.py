"""One contract for every ConversationStore backend.

Backends: SQLite (the embedded default), PostgreSQL (the real server on 127.0.0.1:5432, through
the same relational adapter), MongoDB through ``mongomock`` (the pymongo code path, in memory)
and a real MongoDB **only when ``MONGODB_URL`` is set** when the tests are collected. No MongoDB
server can be installed on the development and CI machines (it is in neither Debian nor PyPI),
so there the real-server parameter is not generated at all, rather than generated and skipped;
run ``MONGODB_URL=mongodb://HOST:27017 pytest tests/contract/test_conversation_store_contract.py``
next to a server to add it (each run uses its own database, dropped afterwards).
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Iterator

import mongomock
import pytest

from functions.chat.store import COMPLETE, FAILED, PENDING, NewMessage, Outcome, new_id
from functions.chat.store.mongo import MongoConversationStore
from functions.chat.store.sql import SqlConversationStore
from shared.errors import BadRequestError, ConflictError, NotFoundError, UnavailableError
from shared.storage.relational import PostgresDatabase, SQLiteDatabase

# Read at collection time: the autouse clean_env fixture removes MONGODB_URL during each test.
REAL_MONGODB_URL = os.environ.get("MONGODB_URL", "")
BACKENDS = ["sqlite", "postgresql", "mongomock"] + (["mongodb"] if REAL_MONGODB_URL else [])

ALICE, BOB = "user-alice", "user-bob"
INJECTIONS = [{"$gt": ""}, {"$ne": None}, "' OR '1'='1", "abc", "A" * 32, "0" * 31, "0" * 33, None, 42, ["x"]]


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator:
    kind = request.param
    if kind == "sqlite":
        backend = SqlConversationStore(SQLiteDatabase(tmp_path / "chat.sqlite3"))
    elif kind == "postgresql":
        url = request.getfixturevalue("postgres_url")
        backend = SqlConversationStore(PostgresDatabase(url))
        db = backend._db
        db.migrate("chat", Path("functions/chat/store/migrations").resolve())
        db.execute("DELETE FROM chat_messages")
        db.execute("DELETE FROM chat_conversations")
    elif kind == "mongomock":
        backend = MongoConversationStore(mongomock.MongoClient(), "chatfaas_test")
    else:
        import pymongo

        client = pymongo.MongoClient(REAL_MONGODB_URL, serverSelectionTimeoutMS=3000)
        name = f"chatfaas_test_{secrets.token_hex(4)}"
        backend = MongoConversationStore(client, name)
        request.addfinalizer(lambda: (client.drop_database(name), client.close()))
    try:
        yield backend
    finally:
        backend.close()


def _turn(store, conversation_id, user_id=ALICE, *, content="hello", now=100.0, parent_id=None):
    """A user message and its pending assistant reply, as the chat function adds them."""
    user = NewMessage(role="user", content=content, parent_id=parent_id)
    assistant_id = new_id()
    assistant = NewMessage(role="assistant", content="", parent_id=user.id, status=PENDING, id=assistant_id,
                           request_id=assistant_id, model="smollm2-135m-instruct")
    return store.add_messages(conversation_id, user_id, [user, assistant], now=now)


# -- conversations ------------------------------------------------------------------------

def test_a_created_conversation_reads_back_with_its_fields(store):
    created = store.create_conversation(ALICE, now=10.0, title="Plans", model="m1", system_prompt="Be brief.")
    got = store.get_conversation(created.id, ALICE)
    assert got == created
    assert (got.title, got.model, got.system_prompt, got.created_at, got.updated_at) == ("Plans", "m1", "Be brief.", 10.0, 10.0)


def test_another_users_conversation_is_not_found_everywhere(store):
    conv = store.create_conversation(ALICE, now=1.0)
    _, assistant = _turn(store, conv.id)
    with pytest.raises(NotFoundError):
        store.get_conversation(conv.id, BOB)
    with pytest.raises(NotFoundError):
        store.update_conversation(conv.id, BOB, now=2.0, title="mine now")
    with pytest.raises(NotFoundError):
        store.delete_conversation(conv.id, BOB)
    with pytest.raises(NotFoundError):
        store.add_messages(conv.id, BOB, [NewMessage(role="user", content="x")], now=2.0)
    with pytest.raises(NotFoundError):
        store.list_messages(conv.id, BOB)
    with pytest.raises(NotFoundError):
        store.get_message(conv.id, assistant.id, BOB)
    assert store.get_conversation(conv.id, ALICE).title is None
    assert len(store.list_messages(conv.id, ALICE)) == 2


def test_a_missing_conversation_is_not_found(store):
    with pytest.raises(NotFoundError):
        store.get_conversation(new_id(), ALICE)


def test_update_changes_only_the_given_fields_and_touches_updated_at(store):
    conv = store.create_conversation(ALICE, now=1.0, title="old", system_prompt="keep")
    updated = store.update_conversation(conv.id, ALICE, now=5.0, title="new")
    assert (updated.title, updated.system_prompt, updated.updated_at, updated.created_at) == ("new", "keep", 5.0, 1.0)
    cleared = store.update_conversation(conv.id, ALICE, now=6.0, system_prompt=None)
    assert (cleared.title, cleared.system_prompt) == ("new", None)
    assert store.get_conversation(conv.id, ALICE) == cleared


def test_delete_removes_the_conversation_and_its_messages(store):
    conv = store.create_conversation(ALICE, now=1.0)
    _, assistant = _turn(store, conv.id)
    store.delete_conversation(conv.id, ALICE)
    with pytest.raises(NotFoundError):
        store.get_conversation(conv.id, ALICE)
    assert store.find_by_request_id(assistant.request_id) is None
    with pytest.raises(NotFoundError):
        store.delete_conversation(conv.id, ALICE)


def test_a_duplicate_conversation_id_is_a_conflict(store):
    conv = store.create_conversation(ALICE, now=1.0)
    with pytest.raises(ConflictError):
        store.create_conversation(ALICE, now=2.0, id=conv.id)


# -- listing ------------------------------------------------------------------------------

def test_list_pages_own_conversations_newest_first(store):
    mine = [store.create_conversation(ALICE, now=float(i), title=f"c{i}") for i in range(7)]
    store.create_conversation(BOB, now=100.0, title="bob's")
    seen, cursor = [], None
    for _ in range(10):
        page = store.list_conversations(ALICE, limit=3, cursor=cursor)
        seen.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert [c.title for c in seen] == [f"c{i}" for i in range(6, -1, -1)]
    assert {c.user_id for c in seen} == {ALICE}
    assert len({c.id for c in seen}) == len(mine)


def test_list_breaks_ties_on_updated_at_stably(store):
    same_time = [store.create_conversation(ALICE, now=50.0) for _ in range(5)]
    first = store.list_conversations(ALICE, limit=2)
    second = store.list_conversations(ALICE, limit=2, cursor=first.next_cursor)
    third = store.list_conversations(ALICE, limit=2, cursor=second.next_cursor)
    ids = [c.id for page in (first, second, third) for c in page.items]
    assert ids == sorted((c.id for c in same_time), reverse=True)
    assert third.next_cursor is None


def test_a_conversation_with_a_new_message_moves_to_the_top(store):
    older = store.create_conversation(ALICE, now=1.0)
    store.create_conversation(ALICE, now=2.0)
    _turn(store, older.id, now=3.0)
    assert store.list_conversations(ALICE, limit=1).items[0].id == older.id


def test_the_last_full_page_has_no_next_cursor(store):
    for i in range(4):
        store.create_conversation(ALICE, now=float(i))
    page = store.list_conversations(ALICE, limit=4)
    assert len(page.items) == 4 and page.next_cursor is None
    assert store.list_conversations(BOB).items == []


@pytest.mark.parametrize("cursor", ["not-a-cursor", "e30", "WzEsImFiYyJd", "W3siJGd0IjoiIn0sIiJd"])
def test_a_forged_cursor_is_a_bad_request(store, cursor):
    store.create_conversation(ALICE, now=1.0)
    with pytest.raises(BadRequestError):
        store.list_conversations(ALICE, cursor=cursor)


# -- messages -----------------------------------------------------------------------------

def test_messages_come_back_in_the_order_they_were_added_with_parents(store):
    conv = store.create_conversation(ALICE, now=1.0)
    user1, assistant1 = _turn(store, conv.id, content="one", now=5.0)
    user2, assistant2 = _turn(store, conv.id, content="two", now=5.0, parent_id=assistant1.id)
    messages = store.list_messages(conv.id, ALICE)
    assert [m.id for m in messages] == [user1.id, assistant1.id, user2.id, assistant2.id]
    assert [m.parent_id for m in messages] == [None, user1.id, assistant1.id, user2.id]
    assert [m.status for m in messages] == [COMPLETE, PENDING, COMPLETE, PENDING]
    assert store.get_conversation(conv.id, ALICE).updated_at == 5.0
    assert store.get_message(conv.id, user2.id, ALICE).content == "two"


def test_a_message_of_another_conversation_is_not_found(store):
    first = store.create_conversation(ALICE, now=1.0)
    second = store.create_conversation(ALICE, now=1.0)
    _, assistant = _turn(store, first.id)
    with pytest.raises(NotFoundError):
        store.get_message(second.id, assistant.id, ALICE)


def test_finishing_a_pending_message_stores_the_reply_once(store):
    conv = store.create_conversation(ALICE, now=1.0)
    _, assistant = _turn(store, conv.id)
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    done, changed = store.finish_message(assistant.request_id, Outcome.complete("Hi!", usage=usage, finish_reason="stop"), now=9.0)
    assert changed and done.status == COMPLETE and done.content == "Hi!" and done.usage == usage
    assert done.finish_reason == "stop" and done.updated_at == 9.0 and done.model == "smollm2-135m-instruct"
    again, changed_again = store.finish_message(assistant.request_id, Outcome.failed("late", "too late"), now=10.0)
    assert not changed_again and again == done
    assert [m.role for m in store.list_messages(conv.id, ALICE)] == ["user", "assistant"]


def test_a_failed_reply_keeps_its_reason_and_never_turns_complete(store):
    conv = store.create_conversation(ALICE, now=1.0)
    _, assistant = _turn(store, conv.id)
    failed, changed = store.finish_message(assistant.request_id, Outcome.failed("context_length_exceeded", "too long"), now=2.0)
    assert changed and failed.status == FAILED and failed.error == {"code": "context_length_exceeded", "message": "too long"}
    after, changed_again = store.finish_message(assistant.request_id, Outcome.complete("late"), now=3.0)
    assert not changed_again and after.status == FAILED and after.content == ""


def test_finishing_an_unknown_request_creates_nothing(store):
    message, changed = store.finish_message(new_id(), Outcome.complete("ghost"), now=1.0)
    assert message is None and not changed


def test_a_request_id_belongs_to_one_message_only(store):
    conv = store.create_conversation(ALICE, now=1.0)
    _, assistant = _turn(store, conv.id)
    duplicate = NewMessage(role="assistant", content="", status=PENDING, request_id=assistant.request_id)
    with pytest.raises(ConflictError):
        store.add_messages(conv.id, ALICE, [duplicate], now=2.0)
    assert store.find_by_request_id(assistant.request_id).id == assistant.id
    assert len(store.list_messages(conv.id, ALICE)) == 2


def test_user_messages_without_request_ids_do_not_collide(store):
    conv = store.create_conversation(ALICE, now=1.0)
    for i in range(3):
        store.add_messages(conv.id, ALICE, [NewMessage(role="user", content=str(i))], now=2.0)
    assert [m.content for m in store.list_messages(conv.id, ALICE)] == ["0", "1", "2"]


# -- hostile ids ------------------------------------------------------------------------

@pytest.mark.parametrize("bad", INJECTIONS, ids=repr)
def test_ids_that_are_not_ids_are_refused_before_any_query(store, bad):
    conv = store.create_conversation(ALICE, now=1.0)
    _turn(store, conv.id)
    calls = [
        lambda: store.get_conversation(bad, ALICE),
        lambda: store.update_conversation(bad, ALICE, now=2.0, title="x"),
        lambda: store.delete_conversation(bad, ALICE),
        lambda: store.list_messages(bad, ALICE),
        lambda: store.get_message(conv.id, bad, ALICE),
        lambda: store.get_message(bad, conv.id, ALICE),
        lambda: store.find_by_request_id(bad),
        lambda: store.finish_message(bad, Outcome.complete("x"), now=2.0),
        lambda: store.add_messages(bad, ALICE, [NewMessage(role="user", content="x")], now=2.0),
    ]
    for call in calls:
        with pytest.raises(BadRequestError):
            call()
    assert store.get_conversation(conv.id, ALICE).title is None
    assert len(store.list_messages(conv.id, ALICE)) == 2


@pytest.mark.parametrize("bad_user", [{"$ne": None}, "", 7, "u" * 201])
def test_user_ids_that_are_not_strings_are_refused(store, bad_user):
    conv = store.create_conversation(ALICE, now=1.0)
    with pytest.raises(BadRequestError):
        store.get_conversation(conv.id, bad_user)
    with pytest.raises(BadRequestError):
        store.list_conversations(bad_user)


# -- driver failures --------------------------------------------------------------------

def test_an_unreachable_mongodb_is_unavailable_not_a_crash():
    store = MongoConversationStore("mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=200&connectTimeoutMS=200", "x")
    try:
        with pytest.raises(UnavailableError):
            store.create_conversation(ALICE, now=1.0)
        with pytest.raises(UnavailableError):
            store.get_conversation(new_id(), ALICE)
    finally:
        store.close()
