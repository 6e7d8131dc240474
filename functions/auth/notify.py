"""Best-effort publication of ``auth.user.registered``: registration never fails or hangs
because Kafka is down. A lost event costs nothing lasting: ``users`` also creates the profile
lazily from the token on first access."""
from __future__ import annotations

import concurrent.futures
import logging
from datetime import datetime, timezone
from typing import Any, Callable

from functions.auth.store import UserRecord

log = logging.getLogger("functions.auth.notify")


def registered_event_data(user: UserRecord) -> dict[str, Any]:
    return {
        "user_id": user.id,
        "email": user.email,
        "display_name": user.display_name,
        "roles": list(user.roles),
        "created_at": datetime.fromtimestamp(user.created_at, timezone.utc).isoformat(),
    }


class RegistrationNotifier:
    """Publishes on a worker thread and waits at most ``timeout`` seconds for it."""

    def __init__(self, publisher_factory: Callable[[], Any], timeout: float = 2.0) -> None:
        self._factory = publisher_factory
        self._publisher: Any = None
        self._timeout = timeout
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="auth-events")

    def __call__(self, user: UserRecord) -> None:
        future = self._executor.submit(self._publish, user)
        try:
            future.result(timeout=self._timeout)
        except concurrent.futures.TimeoutError:
            log.warning("publishing auth.user.registered for %s is slow; continuing without waiting", user.id)
        except Exception as exc:  # best effort by design: the account exists either way
            log.warning("could not publish auth.user.registered for %s: %s", user.id, exc)

    def _publish(self, user: UserRecord) -> str:
        from shared.events.types import AUTH_USER_REGISTERED, USERS_EVENTS

        if self._publisher is None:
            self._publisher = self._factory()
        return self._publisher.publish(
            USERS_EVENTS,
            AUTH_USER_REGISTERED,
            registered_event_data(user),
            key=user.id,
            # Stable, so a retried publication is recognisably the same event downstream.
            id=f"{AUTH_USER_REGISTERED}:{user.id}",
            subject=user.id,
        )
