"""xling's error types, shared by the api, the worker and the CLI. Each carries a one-sentence message and a
machine `code`; which HTTP status answers it is the HTTP layer's business (`xling.app.errors`)."""

from __future__ import annotations


class XlingError(Exception):
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(XlingError):
    """A request the service refuses (422). `field` names the part of the request at fault, as the response's
    `errors` list reports it (`k`, `documents[2].text`), when one field is."""

    code = "invalid_input"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NotFound(XlingError):
    code = "not_found"


class Conflict(XlingError):
    code = "conflict"


class Unauthorized(XlingError):
    code = "unauthorized"


class PayloadTooLarge(XlingError):
    code = "payload_too_large"


class Overloaded(XlingError):
    """The bounded queue is full: the caller should retry later rather than wait without bound."""

    code = "overloaded"


class NotReady(XlingError):
    code = "not_ready"


class WriteTimeout(XlingError):
    """Stored durably, but not yet searchable by the deadline."""

    code = "write_not_applied"


class StoreUnavailable(XlingError):
    """Redis cannot be reached: the caller should retry shortly (the service reconnects by itself)."""

    code = "store_unavailable"
