"""The chat function's settings, read once from ``CHAT_*`` variables (and where ``users`` is: ``FUNCTION_URL_USERS`` or ``GATEWAY_URL``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from shared.config import ConfigError, env_float, env_int, env_str, function_url

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class ChatSettings:
    # How long a synchronous or streaming request waits for the reply before answering 504.
    reply_timeout_seconds: float = 60.0
    # The model's context window in tokens, and the crude estimate that maps characters to tokens.
    context_tokens: int = 2048
    chars_per_token: float = 4.0
    default_model: str = DEFAULT_MODEL
    default_max_tokens: int = 256
    default_temperature: float = 0.7
    max_message_chars: int = 32_000
    # The users function (FUNCTION_URL_USERS, else ${GATEWAY_URL}/function/users).
    users_url: str = "http://127.0.0.1:8080/function/users"
    preferences_ttl_seconds: float = 60.0
    users_timeout_seconds: float = 2.0
    # One blocking read on the token channel; bounded so a stream notices a timeout or a client
    # that left, and so the store is polled between reads (a worker that does not stream).
    channel_read_seconds: float = 1.0
    token_channel_ttl_seconds: float = 600.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ChatSettings":
        settings = cls(
            reply_timeout_seconds=env_float("CHAT_REPLY_TIMEOUT_SECONDS", 60.0, environ=environ),
            context_tokens=env_int("CHAT_CONTEXT_TOKENS", 2048, environ=environ),
            chars_per_token=env_float("CHAT_CHARS_PER_TOKEN", 4.0, environ=environ),
            default_model=env_str("CHAT_DEFAULT_MODEL", DEFAULT_MODEL, environ=environ),
            default_max_tokens=env_int("CHAT_DEFAULT_MAX_TOKENS", 256, environ=environ),
            default_temperature=env_float("CHAT_DEFAULT_TEMPERATURE", 0.7, environ=environ),
            max_message_chars=env_int("CHAT_MAX_MESSAGE_CHARS", 32_000, environ=environ),
            users_url=function_url("users", environ),
            preferences_ttl_seconds=env_float("CHAT_PREFERENCES_TTL_SECONDS", 60.0, environ=environ),
            users_timeout_seconds=env_float("CHAT_USERS_TIMEOUT_SECONDS", 2.0, environ=environ),
            channel_read_seconds=env_float("CHAT_CHANNEL_READ_SECONDS", 1.0, environ=environ),
        )
        settings.check()
        return settings

    def check(self) -> None:
        if self.reply_timeout_seconds <= 0 or self.channel_read_seconds <= 0:
            raise ConfigError("CHAT_REPLY_TIMEOUT_SECONDS and CHAT_CHANNEL_READ_SECONDS must be positive")
        if self.context_tokens < 64 or self.chars_per_token <= 0:
            raise ConfigError("CHAT_CONTEXT_TOKENS must be at least 64 and CHAT_CHARS_PER_TOKEN positive")
        if not 1 <= self.default_max_tokens < self.context_tokens:
            raise ConfigError("CHAT_DEFAULT_MAX_TOKENS must be between 1 and CHAT_CONTEXT_TOKENS")
