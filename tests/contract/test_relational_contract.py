"""One contract for every relational backend: SQLite (file) and PostgreSQL (a real server)."""
from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from shared.errors import ConflictError, UnavailableError
from shared.storage.relational import (
    PostgresDatabase,
    SQLiteDatabase,
    database_from_env,
    discover_migrations,
    to_pyformat,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

NOTES_DDL = (
    "CREATE TABLE contract_notes ("
    " id TEXT PRIMARY KEY,"
    " owner TEXT NOT NULL,"
    " body TEXT NOT NULL,"
    " score DOUBLE PRECISION,"
    " views BIGINT NOT NULL DEFAULT 0)"
)


@pytest.fixture(params=["sqlite", "postgresql"])
def make_db(request, tmp_path):
    """Build databases of the parametrized backend pointing at the same storage; all closed after."""
    opened = []
    if request.param == "postgresql":
        url = request.getfixturevalue("postgres_url")
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:  # each test starts from an empty schema
            conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")

        def make():
            opened.append(PostgresDatabase(url, max_size=8))
            return opened[-1]
    else:
        path = tmp_path / "contract.sqlite3"

        def make():
            opened.append(SQLiteDatabase(path))
            return opened[-1]

    yield make
    for db in opened:
        db.close()


@pytest.fixture
def db(make_db):
    database = make_db()
    database.execute(NOTES_DDL)
    return database


def add_note(db, note_id="n1", owner="ann", body="hello", score=None):
    return db.execute(
        "INSERT INTO contract_notes (id, owner, body, score) VALUES (:id, :owner, :body, :score)",
        {"id": note_id, "owner": owner, "body": body, "score": score},
    )


# --------------------------------------------------------------------------- queries

def test_rows_come_back_as_dicts_with_named_parameters(db):
    assert add_note(db, "n1", body="hi", score=1.5) == 1
    add_note(db, "n2", owner="bob")
    row = db.fetch_one("SELECT id, owner, body, score, views FROM contract_notes WHERE id = :id", {"id": "n1"})
    assert row == {"id": "n1", "owner": "ann", "body": "hi", "score": 1.5, "views": 0}
    rows = db.fetch_all("SELECT id FROM contract_notes ORDER BY id")
    assert rows == [{"id": "n1"}, {"id": "n2"}]


def test_fetch_one_returns_none_and_fetch_all_empty_when_nothing_matches(db):
    assert db.fetch_one("SELECT id FROM contract_notes WHERE id = :id", {"id": "nope"}) is None
    assert db.fetch_all("SELECT id FROM contract_notes") == []


def test_execute_returns_the_number_of_rows_changed(db):
    for i in range(3):
        add_note(db, f"n{i}")
    assert db.execute("UPDATE contract_notes SET views = views + 1 WHERE owner = :o", {"o": "ann"}) == 3
    assert db.execute("DELETE FROM contract_notes WHERE id = :id", {"id": "missing"}) == 0


def test_returning_gives_the_written_row(db):
    add_note(db, "n1")
    row = db.fetch_one(
        "UPDATE contract_notes SET views = views + :by WHERE id = :id RETURNING views", {"by": 5, "id": "n1"}
    )
    assert row == {"views": 5}


def test_a_parameter_can_repeat_and_percent_and_colons_in_literals_survive(db):
    add_note(db, "n1", body="50% off: today")
    row = db.fetch_one(
        "SELECT body, '100%' AS pct, 'a:b' AS colon FROM contract_notes WHERE id = :id AND owner <> :id",
        {"id": "n1"},
    )
    assert row == {"body": "50% off: today", "pct": "100%", "colon": "a:b"}


def test_values_with_quotes_are_bound_not_interpolated(db):
    evil = "x'); DROP TABLE contract_notes; --"
    add_note(db, evil, body=evil)
    assert db.fetch_one("SELECT body FROM contract_notes WHERE id = :id", {"id": evil}) == {"body": evil}


def test_unicode_and_large_integers_round_trip(db):
    add_note(db, "n1", body="héllo 世界 🎉")
    db.execute("UPDATE contract_notes SET views = :v WHERE id = 'n1'", {"v": 2**53 + 1})
    assert db.fetch_one("SELECT body, views FROM contract_notes") == {"body": "héllo 世界 🎉", "views": 2**53 + 1}


# --------------------------------------------------------------------------- errors

def test_a_duplicate_primary_key_raises_conflict(db):
    add_note(db, "n1")
    with pytest.raises(ConflictError) as info:
        add_note(db, "n1")
    assert info.value.status == 409
    assert db.fetch_all("SELECT id FROM contract_notes") == [{"id": "n1"}]


def test_a_unique_index_violation_raises_conflict(db):
    db.execute("CREATE UNIQUE INDEX contract_notes_body ON contract_notes (owner, body)")
    add_note(db, "n1", body="same")
    with pytest.raises(ConflictError):
        add_note(db, "n2", body="same")


def test_foreign_keys_are_enforced(db):
    db.execute("CREATE TABLE contract_tags (note_id TEXT NOT NULL REFERENCES contract_notes(id), tag TEXT)")
    with pytest.raises(ConflictError):
        db.execute("INSERT INTO contract_tags (note_id, tag) VALUES (:n, :t)", {"n": "missing", "t": "x"})


# --------------------------------------------------------------------------- transactions

def test_a_transaction_commits_all_of_its_statements(db, make_db):
    with db.transaction():
        add_note(db, "n1")
        add_note(db, "n2")
    assert len(make_db().fetch_all("SELECT id FROM contract_notes")) == 2


def test_an_error_inside_a_transaction_rolls_everything_back(db):
    with pytest.raises(RuntimeError):
        with db.transaction():
            add_note(db, "n1")
            raise RuntimeError("boom")
    assert db.fetch_all("SELECT id FROM contract_notes") == []


def test_a_conflict_inside_a_transaction_rolls_it_back(db):
    add_note(db, "n0")
    with pytest.raises(ConflictError):
        with db.transaction():
            add_note(db, "n1")
            add_note(db, "n0")
    assert db.fetch_all("SELECT id FROM contract_notes") == [{"id": "n0"}]


def test_uncommitted_writes_are_invisible_to_other_connections(db, make_db):
    other = make_db()
    seen = {}
    with db.transaction():
        add_note(db, "n1")
        # Another thread (so another connection) must not see the open transaction's row.
        thread = threading.Thread(
            target=lambda: seen.update(row=other.fetch_one("SELECT id FROM contract_notes"))
        )
        thread.start()
        thread.join(10)
        assert db.fetch_one("SELECT id FROM contract_notes") == {"id": "n1"}
    assert seen == {"row": None}
    assert other.fetch_one("SELECT id FROM contract_notes") == {"id": "n1"}


def test_a_nested_transaction_rolls_back_alone(db):
    with db.transaction():
        add_note(db, "outer")
        with pytest.raises(ValueError):
            with db.transaction():
                add_note(db, "inner")
                raise ValueError("inner fails")
        add_note(db, "after")
    assert [r["id"] for r in db.fetch_all("SELECT id FROM contract_notes ORDER BY id")] == ["after", "outer"]


def test_concurrent_increments_from_many_threads_are_not_lost(db, make_db):
    add_note(db, "n1")

    def bump():
        mine = make_db()
        for _ in range(20):
            with mine.transaction():
                mine.execute("UPDATE contract_notes SET views = views + 1 WHERE id = 'n1'")

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert db.fetch_one("SELECT views FROM contract_notes")["views"] == 80


# --------------------------------------------------------------------------- migrations

def write_migrations(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, sql in files.items():
        (folder / name).write_text(sql)
    return folder


def test_migrations_apply_once_and_in_order(make_db, tmp_path):
    db = make_db()
    folder = write_migrations(
        tmp_path / "m",
        {
            "002_add_email.sql": "ALTER TABLE demo_users ADD COLUMN email TEXT;",
            "001_init.sql": "CREATE TABLE demo_users (id TEXT PRIMARY KEY);\n"
            "-- a comment; with a semicolon\n"
            "CREATE INDEX demo_users_id ON demo_users (id);",
            "README.md": "not a migration",
        },
    )
    assert db.migrate("demo", folder) == ["001_init", "002_add_email"]
    assert db.migrate("demo", folder) == []
    db.execute("INSERT INTO demo_users (id, email) VALUES ('u1', 'a@b.c')")
    write_migrations(folder, {"010_more.sql": "ALTER TABLE demo_users ADD COLUMN name TEXT;"})
    assert make_db().migrate("demo", folder) == ["010_more"]
    versions = db.fetch_all(
        "SELECT version FROM schema_migrations WHERE component = :c ORDER BY version", {"c": "demo"}
    )
    assert [v["version"] for v in versions] == ["001_init", "002_add_email", "010_more"]


def test_components_track_their_migrations_separately(make_db, tmp_path):
    db = make_db()
    a = write_migrations(tmp_path / "a", {"001_init.sql": "CREATE TABLE a_items (id TEXT);"})
    b = write_migrations(tmp_path / "b", {"001_init.sql": "CREATE TABLE b_items (id TEXT);"})
    assert db.migrate("a", a) == ["001_init"]
    assert db.migrate("b", b) == ["001_init"]


def test_a_dialect_specific_file_replaces_the_generic_one(make_db, tmp_path):
    db = make_db()
    folder = write_migrations(
        tmp_path / "m",
        {
            "001_init.sql": "CREATE TABLE demo_kind (kind TEXT);",
            f"001_init.{db.dialect}.sql": f"CREATE TABLE demo_kind (kind TEXT DEFAULT '{db.dialect}');",
        },
    )
    assert db.migrate("demo", folder) == ["001_init"]
    db.execute("INSERT INTO demo_kind DEFAULT VALUES")
    assert db.fetch_one("SELECT kind FROM demo_kind") == {"kind": db.dialect}


def test_a_failing_migration_leaves_nothing_applied(make_db, tmp_path):
    db = make_db()
    folder = write_migrations(
        tmp_path / "m",
        {"001_ok.sql": "CREATE TABLE demo_ok (id TEXT);", "002_bad.sql": "CREATE TABLE demo_bad (id NOPE_TYPE(;"},
    )
    with pytest.raises(Exception):
        db.migrate("demo", folder)
    (folder / "002_bad.sql").write_text("CREATE TABLE demo_bad (id TEXT);")
    assert db.migrate("demo", folder) == ["001_ok", "002_bad"]


def test_two_processes_migrating_at_once_apply_each_file_once(make_db, tmp_path):
    db = make_db()
    # Non-idempotent migrations (a second run fails on the duplicate table), the first one slow
    # enough that the processes surely overlap.
    slow = {
        "postgresql": "SELECT pg_sleep(1.5);",
        "sqlite": "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 2000000) "
        "SELECT COUNT(*) FROM c;",
    }[db.dialect]
    folder = write_migrations(
        tmp_path / "m",
        {f"{i:03d}_step.sql": f"CREATE TABLE race_{i} (id TEXT);" for i in range(1, 6)},
    )
    (folder / "001_step.sql").write_text(f"CREATE TABLE race_1 (id TEXT);\n{slow}")
    target = db.path if db.dialect == "sqlite" else db.url
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from shared.storage.relational import SQLiteDatabase, PostgresDatabase\n"
        "kind, target, folder = sys.argv[1:4]\n"
        "db = SQLiteDatabase(target) if kind == 'sqlite' else PostgresDatabase(target)\n"
        "print(len(db.migrate('race', Path(folder))))\n"
        "db.close()\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, db.dialect, target, str(folder)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    assert sorted(int(out) for out, _ in results) == [0, 0, 5]
    assert db.fetch_one("SELECT COUNT(*) AS n FROM schema_migrations WHERE component = 'race'") == {"n": 5}


# --------------------------------------------------------------------------- backend specifics

def test_placeholder_translation_keeps_casts_literals_and_comments():
    sql = "SELECT :a::text, 'x :b y', \"c:d\", $$ :e $$ -- :f\n, :g /* :h */ WHERE s LIKE '5%'"
    assert to_pyformat(sql) == (
        "SELECT %(a)s::text, 'x :b y', \"c:d\", $$ :e $$ -- :f\n, %(g)s /* :h */ WHERE s LIKE '5%%'"
    )


def test_postgres_casts_work_next_to_parameters(postgres_url):
    db = PostgresDatabase(postgres_url)
    try:
        assert db.fetch_one("SELECT :n::int + 1 AS v, :s::text AS s", {"n": "41", "s": 7}) == {"v": 42, "s": "7"}
    finally:
        db.close()


def test_an_unreachable_postgres_raises_unavailable():
    db = PostgresDatabase("postgresql://postgres@127.0.0.1:1/none", pool_timeout=1, connect_timeout=1)
    try:
        with pytest.raises(UnavailableError) as info:
            db.fetch_one("SELECT 1")
        assert info.value.status == 503
    finally:
        db.close()


def test_sqlite_is_in_wal_mode_with_foreign_keys(tmp_path):
    db = SQLiteDatabase(tmp_path / "x.sqlite3")
    assert db.fetch_one("PRAGMA journal_mode") == {"journal_mode": "wal"}
    assert db.fetch_one("PRAGMA foreign_keys") == {"foreign_keys": 1}
    db.close()


def test_migration_discovery_picks_the_dialect_file(tmp_path):
    folder = write_migrations(
        tmp_path,
        {"001_a.sql": "", "001_a.postgresql.sql": "", "002_b.sqlite.sql": "", "003_c.sql": "", "x.sql": ""},
    )
    pg = discover_migrations(folder, "postgresql")
    assert [(m.version, m.path.name) for m in pg] == [("001_a", "001_a.postgresql.sql"), ("003_c", "003_c.sql")]
    lite = discover_migrations(folder, "sqlite")
    assert [m.path.name for m in lite] == ["001_a.sql", "002_b.sqlite.sql", "003_c.sql"]


def test_database_from_env_picks_postgres_by_url_else_a_sqlite_file(monkeypatch, tmp_path, postgres_url):
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    lite = database_from_env("users")
    assert isinstance(lite, SQLiteDatabase) and lite.path == str(tmp_path / "users.sqlite3")
    lite.close()
    monkeypatch.setenv("DATABASE_URL", postgres_url)
    pg = database_from_env("users")
    assert isinstance(pg, PostgresDatabase) and pg.dialect == "postgresql"
    assert pg.fetch_one("SELECT 1 AS one") == {"one": 1}
    pg.close()
