from tests.functions.identity_support import auth, backend  # noqa: F401 (fixtures)
