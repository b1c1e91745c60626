"""framewire's exceptions (raised by the Rust extension with framewire's own messages)."""

__all__ = ["Error", "Disconnected", "Lagged", "Timeout", "PayloadTooLarge", "InvalidOption", "Full"]


class Error(Exception):
    """Anything framewire reports; the message is the Rust error's, naming what to change."""


class Disconnected(Error, ConnectionError):
    """The peer is gone (or this subscriber was closed): nothing more will arrive."""


class Lagged(Error):
    """This subscriber fell behind under policy=drop-oldest; `missed` frames were dropped
    for it. Receiving goes on: the next recv returns the oldest frame still available."""

    missed: int = 0


class Timeout(Error, TimeoutError):
    """A wait ran past its timeout."""


class PayloadTooLarge(Error, ValueError):
    """The payload exceeds the channel's limit; `option` names the URL option to raise
    (`len` and `limit` are the sizes in bytes)."""

    len: int = 0
    limit: int = 0
    option: str = ""


class InvalidOption(Error, ValueError):
    """An option, URL, layout or input is invalid; `option` names it."""

    option: str = ""


class Full(Error):
    """The channel is full under policy=fail; `option` names the capacity to raise."""

    option: str = ""
