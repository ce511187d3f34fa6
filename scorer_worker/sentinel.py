"""The queue side behind Redis Sentinel: ``redis+sentinel://`` URLs and clients that follow
the primary the sentinels name (DESIGN.md section 9).

RQ needs one server (it does not support Redis Cluster), so the queue side is made highly
available with Sentinel. The form::

    redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?options]

``user:password`` log in to the primary (and its replicas); the sentinels are asked with
their own credentials, given as options, since a sentinel is usually configured apart from
the data servers. Options:

* ``sentinel_username``, ``sentinel_password``: the sentinels' credentials (none by default);
* ``sentinel_timeout_s``: connect and read timeout towards each sentinel, default 0.5 s.

A client built here finds the primary through the sentinels each time it connects or
reconnects (:class:`PrimaryFollowingConnection`), so after a failover its next (retried)
command reaches the promoted replica.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import parse_qsl, unquote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelManagedConnection
from redis.utils import SENTINEL

from producer.redaction import mask_url

from .errors import ConfigError

SCHEME = "redis+sentinel"
DEFAULT_SENTINEL_PORT = 26379
# A sentinel that is down refuses at once; one that hangs (a frozen host, a black-holed
# route) would hold every connect for the socket timeout. Discovery asks the next sentinel
# on a timeout, so a short one bounds what a sick sentinel costs per connect.
DEFAULT_SENTINEL_TIMEOUT_S = 0.5
FORM = "redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]"
OPTIONS = ("sentinel_username", "sentinel_password", "sentinel_timeout_s")

# host:port, or [IPv6]:port; the port may be left out (Sentinel's 26379).
_ADDRESS = re.compile(
    r"^(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^\s:\[\]/@,]+))(?::(?P<port>.*))?$"
)

R = TypeVar("R", bound=redis.Redis)


class SentinelURLError(ConfigError, ValueError):
    """A ``redis+sentinel://`` URL that does not parse; the message says what is wrong.

    Both a :class:`ConfigError` (the project's configuration errors) and a ``ValueError``
    (what ``redis.Redis.from_url`` raises for a bad URL, which callers may already catch).
    """


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL.

    Attributes:
        sentinels: the sentinels' ``(host, port)`` pairs, in the URL's order.
        service_name: the name the sentinels monitor the primary under.
        db: the database number on the primary.
        username: the primary's user (None: the default user).
        password: the primary's password.
        sentinel_username: the sentinels' user.
        sentinel_password: the sentinels' password.
        sentinel_timeout_s: connect and read timeout towards each sentinel, in seconds.
    """

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    sentinel_timeout_s: float = DEFAULT_SENTINEL_TIMEOUT_S


class PrimaryFollowingConnection(SentinelManagedConnection):
    """A connection to the sentinel-managed primary that asks the sentinels again whenever it
    reconnects, not only when the pool hands it out.

    redis-py's ``SentinelManagedConnection`` looks the primary up in ``connect()``, but a
    command retried on the same connection after its socket died (a blocking ``BLMOVE`` of an
    idle RQ worker when the primary is killed, say) reconnects through
    ``send_packed_command`` → ``connect_check_health``, to the address it had: the old
    primary, until the whole retry budget is spent (redis-py issue #3874, open). Here that
    path goes through ``connect()``, so each attempt reaches whichever server the sentinels
    name then.

    It also drops its socket when a read is interrupted, as redis-py's plain ``Connection``
    does (its ``read_response`` defaults ``disconnect_on_error`` to True; the sentinel
    subclass to False). Otherwise an idle RQ worker stopped by SIGTERM inside its blocking
    ``BLMOVE`` (RQ raises ``StopRequested`` from the signal handler) gets the connection
    back with that reply still pending, and its shutdown hangs reading it.
    """

    # True while connect_to() connects to the address the sentinels just named.
    _at_named_address = False

    def connect_to(self, address: tuple[str, int]) -> None:
        """Connect to ``address`` (the primary the sentinels named), as redis-py does."""
        self._at_named_address = True
        try:
            super().connect_to(address)
        finally:
            self._at_named_address = False

    def read_response(
        self,
        disable_decoding: bool = False,
        *,
        timeout: float | object = SENTINEL,
        disconnect_on_error: bool = True,
        push_request: bool = False,
    ) -> Any:
        """Read a reply, as redis-py's sentinel connection does, disconnecting on an error."""
        return super().read_response(
            disable_decoding=disable_decoding,
            timeout=timeout,
            disconnect_on_error=disconnect_on_error,
            push_request=push_request,
        )

    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        """Connect if not connected: to the named address inside :meth:`connect_to`, else
        through ``connect()``, which asks the sentinels first (on every retried attempt)."""
        if self._sock:
            return
        if self._at_named_address:
            super().connect_check_health(
                check_health=check_health, retry_socket_connect=retry_socket_connect
            )
            return
        self.connect()


def is_sentinel_url(url: str) -> bool:
    """Whether ``url`` is of the ``redis+sentinel://`` form (the scheme, in any case)."""
    scheme, separator, _rest = url.partition("://")
    return bool(separator) and scheme.lower() == SCHEME


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse a ``redis+sentinel://`` URL.

    Args:
        url: ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``
            with optional ``?sentinel_username=..&sentinel_password=..&sentinel_timeout_s=..``.
            User, password, service name and option values may be percent-encoded.

    Returns:
        The sentinels, the service, the database and the credentials.

    Raises:
        SentinelURLError: the URL is not of that form; the message quotes it with its
            passwords masked and says which part is wrong.
    """
    shown = mask_url(url)

    def fail(problem: str) -> SentinelURLError:
        return SentinelURLError(f"{shown!r} {problem}; the form is {FORM}")

    if not is_sentinel_url(url):
        raise fail(f"is not a {SCHEME}:// URL")
    rest = url.split("://", 1)[1]
    rest, _, query = rest.partition("?")
    rest, _, fragment = rest.partition("#")
    if fragment:
        raise fail("has a #fragment, which means nothing here")
    netloc, slash, path = rest.partition("/")
    credentials, at, hosts = netloc.rpartition("@")
    username, password = _credentials(credentials) if at else (None, None)
    if not hosts:
        raise fail("names no sentinel")
    sentinels = tuple(_address(part, fail) for part in hosts.split(","))
    segments = path.split("/") if slash else []
    if segments and segments[-1] == "":  # a trailing slash: ".../service/" or ".../service/0/"
        segments.pop()
    if not segments or not segments[0]:
        raise fail("names no service (the name the sentinels monitor the primary under)")
    if len(segments) > 2:
        raise fail(f"has {len(segments)} path parts; give /service_name or /service_name/db")
    db = _db(segments[1], fail) if len(segments) == 2 else 0
    options = _options(query, fail)
    return SentinelURL(
        sentinels=sentinels,
        service_name=unquote(segments[0]),
        db=db,
        username=username,
        password=password,
        **options,
    )


def sentinel_client(
    url: str | SentinelURL, *, redis_class: type[R] = redis.Redis, **connection_kwargs: Any
) -> R:
    """A client of the primary the sentinels of ``url`` name, following it across failovers.

    Args:
        url: a ``redis+sentinel://`` URL, or one already parsed.
        redis_class: the client class (``RetryingRedis`` for processes that ride out an
            outage, failovers included).
        connection_kwargs: options of the connections to the primary (timeouts, ``retry``,
            ``health_check_interval``, ...), as ``redis.Redis.from_url`` takes them. A
            ``retry`` given here is what carries commands over a failover: the connection
            asks the sentinels for the primary again on each attempt.

    Returns:
        A ``redis_class`` whose pool connects to the current primary; its commands fail with
        ``redis.ConnectionError`` (``MasterNotFoundError``) while no sentinel names one.

    Raises:
        SentinelURLError: ``url`` does not parse.
    """
    parsed = url if isinstance(url, SentinelURL) else parse_sentinel_url(url)
    sentinel_kwargs: dict[str, Any] = {
        "socket_timeout": parsed.sentinel_timeout_s,
        "socket_connect_timeout": parsed.sentinel_timeout_s,
        # Discovery already moves on to the next sentinel on an error: redis-py's default
        # retry (10 attempts with backoff) would make one dead sentinel cost seconds.
        "retry": Retry(NoBackoff(), 0),
        "username": parsed.sentinel_username,
        "password": parsed.sentinel_password,
    }
    manager = Sentinel(list(parsed.sentinels), sentinel_kwargs=sentinel_kwargs)
    return manager.master_for(
        parsed.service_name,
        redis_class=redis_class,
        connection_class=PrimaryFollowingConnection,
        db=parsed.db,
        username=parsed.username,
        password=parsed.password,
        **connection_kwargs,
    )


def close_client(client: redis.Redis) -> None:
    """Close ``client`` and, when it follows a sentinel-managed primary, its sentinel clients.

    ``redis.Redis.close`` closes the primary's pool only; the connections to the sentinels
    belong to the ``Sentinel`` object the pool keeps.
    """
    client.close()
    manager = getattr(client.connection_pool, "sentinel_manager", None)
    if isinstance(manager, Sentinel):
        manager.close()


# --- parts of the URL ---------------------------------------------------------------------


def _credentials(text: str) -> tuple[str | None, str | None]:
    user, colon, password = text.partition(":")
    return (unquote(user) or None), (unquote(password) if colon and password else None)


def _address(text: str, fail: Callable[[str], SentinelURLError]) -> tuple[str, int]:
    match = _ADDRESS.match(text.strip())
    if not text.strip() or match is None:
        raise fail(f"has a malformed sentinel address {text!r} (give host:port)")
    host = match.group("ipv6") or match.group("host")
    port_text = match.group("port")
    if port_text is None:
        return host, DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise fail(f"has a bad port in sentinel address {text!r} (1 to 65535)")
    return host, int(port_text)


def _db(text: str, fail: Callable[[str], SentinelURLError]) -> int:
    if not text.isdigit():
        raise fail(f"has database {text!r}: give a number (0, 1, ...)")
    return int(text)


def _options(query: str, fail: Callable[[str], SentinelURLError]) -> dict[str, Any]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise fail("has a malformed ?query") from None
    options: dict[str, Any] = {}
    for name, value in pairs:
        if name not in OPTIONS:
            raise fail(f"has unknown option {name!r} (known: {', '.join(OPTIONS)})")
        if name in options:
            raise fail(f"gives option {name!r} twice")
        if not value:
            raise fail(f"gives option {name!r} no value")
        options[name] = value
    if "sentinel_timeout_s" in options:
        options["sentinel_timeout_s"] = _seconds(options["sentinel_timeout_s"], fail)
    return options


def _seconds(text: str, fail: Callable[[str], SentinelURLError]) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not 0 < seconds < 3600:  # NaN fails too
        raise fail(f"has sentinel_timeout_s={text!r}: give seconds, more than 0")
    return seconds
