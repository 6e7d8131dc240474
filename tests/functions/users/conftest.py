from tests.functions.identity_support import auth, backend, users  # noqa: F401 (fixtures)
