"""Errors of the inference package, split by who is at fault.

`InvalidInput` and `ConfigError` are the caller's (an HTTP 400); `Overloaded`
is a signal the router acts on (retry another node); `ModelNotReady`,
`RequestTimeout` and `InferenceFailed` are the server's (503/504/500).
"""

from __future__ import annotations


class InferenceError(Exception):
    """Base class for errors raised to a request."""


class ConfigError(ValueError):
    """An invalid model config; the message names the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class InvalidInput(InferenceError, ValueError):
    """A request's tensors have the wrong name, dtype, shape or size."""


class Overloaded(InferenceError):
    """The model's queue is full; rejected at once so the router can go elsewhere."""


class ModelNotReady(InferenceError):
    """The model is not loaded (loading, failed, unloading or unknown)."""


class RequestTimeout(InferenceError):
    """The request did not complete within its timeout."""


class InferenceFailed(InferenceError):
    """The model raised while running a batch."""


class EngineDeadError(InferenceError):
    """The LLM engine process exited or stopped answering; its requests fail (HTTP 503)."""
