"""Code shared by every function: configuration, HTTP adapter, auth, storage, events."""
