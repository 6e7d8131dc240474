"""Storage adapters: one interface per capability, thin backends, driver errors turned into ours.

- ``shared.storage.relational``: ``Database`` (SQLite, PostgreSQL), ``database_from_env``.
- ``shared.storage.cache``: ``Cache`` (memory, SQLite file, Redis), ``cache_from_env``.
- ``shared.storage.blob``: ``BlobStore`` (local folder, S3), ``blob_store_from_env``.

Drivers (psycopg, redis, boto3) are imported lazily, so importing these modules is cheap.
"""
from shared.storage.cache import Cache, MemoryCache, RedisCache, SQLiteCache, cache_from_env
from shared.storage.relational import Database, PostgresDatabase, SQLiteDatabase, database_from_env

__all__ = [
    "Cache",
    "MemoryCache",
    "SQLiteCache",
    "RedisCache",
    "cache_from_env",
    "Database",
    "SQLiteDatabase",
    "PostgresDatabase",
    "database_from_env",
]
