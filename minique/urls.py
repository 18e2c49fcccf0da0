"""Which Redis deployment a URL names: one server, a Redis Cluster or a Sentinel group — **pure**.

    redis://[[user]:password@]host:port[/db]         one server (and rediss://, unix://, redis+embedded://):
                                                     handed to redis-py unchanged
    redis+cluster://[[user]:password@]h1:p1,h2:p2[/0]  a Redis Cluster (rediss+cluster:// with TLS;
                                                     rediscluster:// is an alias); the nodes are where the
                                                     client starts looking, it finds the others itself
    sentinel://[[user]:password@]h1:26379[/db];sentinel://h2:26379
                                                     a Sentinel group, as kombu spells it: one URL per sentinel,
                                                     joined by `;`; the credentials and database number (of the
                                                     first URL that gives them) are the master's

A Sentinel URL needs the transport option `master_name` (the name the sentinels monitor); `sentinel_kwargs`
(e.g. the sentinels' own password) and `min_other_sentinels` are passed on to redis-py's `Sentinel`.
A cluster has only database 0: any other number is refused rather than ignored.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Tuple

from .exceptions import ConfigurationError

CLUSTER_SCHEMES = {"redis+cluster": False, "rediscluster": False, "rediss+cluster": True}  # -> TLS
SENTINEL_SCHEMES = {"sentinel": False, "sentinels": True}
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379


class Target(NamedTuple):
    """Where to connect: `kind` is "redis" (then `url` goes to redis-py as it is), "cluster" or "sentinel"."""

    kind: str
    url: str
    nodes: Tuple[Tuple[str, int], ...] = ()
    username: Optional[str] = None
    password: Optional[str] = None
    db: int = 0
    ssl: bool = False
    master_name: Optional[str] = None
    sentinel_kwargs: Optional[Dict[str, Any]] = None
    min_other_sentinels: int = 0


def scheme_of(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def is_cluster_url(url: str) -> bool:
    return scheme_of(url) in CLUSTER_SCHEMES


def is_sentinel_url(url: str) -> bool:
    return scheme_of(url.split(";", 1)[0].strip()) in SENTINEL_SCHEMES


def parse(url: str, transport_options: Optional[Mapping[str, Any]] = None, setting: str = "broker_url") -> Target:
    """The deployment `url` names; a ConfigurationError saying what is wrong (naming `setting`) otherwise."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(f"{setting} must be a URL such as redis://host:6379/0, not {url!r}")
    if is_cluster_url(url):
        return _cluster(url, setting)
    if is_sentinel_url(url):
        return _sentinel(url, dict(transport_options or {}), setting)
    return Target("redis", url)


def _cluster(url: str, setting: str) -> Target:
    scheme = scheme_of(url)
    user, password, hosts, db, query = _split(url, setting)
    if query:
        raise ConfigurationError(f"{setting}: a cluster URL takes no query parameters (given: {query!r}); "
                                 "set connection options in the app's settings")
    if db not in (None, 0):
        raise ConfigurationError(f"{setting}: Redis Cluster has only database 0, and the URL asks for database {db}; "
                                 "use a separate cluster (or a key prefix) to keep apps apart")
    nodes = tuple(_host_port(h, DEFAULT_PORT, setting) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ConfigurationError(f"{setting}: a cluster URL names at least one node: {scheme}://host1:7000,host2:7001/")
    return Target("cluster", url, nodes, user, password, 0, CLUSTER_SCHEMES[scheme])


def _sentinel(url: str, options: Dict[str, Any], setting: str) -> Target:
    nodes: List[Tuple[str, int]] = []
    user = password = None
    db: Optional[int] = None
    ssl: Optional[bool] = None
    for part in (p.strip() for p in url.split(";")):
        if not part:
            continue
        scheme = scheme_of(part)
        if scheme not in SENTINEL_SCHEMES:
            raise ConfigurationError(f"{setting}: every part of a Sentinel URL is a sentinel:// URL, not {scheme!r}"
                                     " (sentinel://host1:26379;sentinel://host2:26379)")
        if ssl is not None and SENTINEL_SCHEMES[scheme] != ssl:
            raise ConfigurationError(f"{setting}: mix of sentinel:// and sentinels:// in one URL")
        ssl = SENTINEL_SCHEMES[scheme]
        u, p, hosts, d, query = _split(part, setting)
        if query:
            raise ConfigurationError(f"{setting}: a Sentinel URL takes no query parameters (given: {query!r}); "
                                     "use broker_transport_options (master_name, sentinel_kwargs, min_other_sentinels)")
        for value, name in ((u, "user name"), (p, "password")):
            if value is not None:
                known: Optional[str] = user if name == "user name" else password
                if known is not None and known != value:
                    raise ConfigurationError(f"{setting}: the parts of a Sentinel URL give different {name}s")
        user, password = (u if u is not None else user), (p if p is not None else password)
        if d is not None:
            if db is not None and db != d:
                raise ConfigurationError(f"{setting}: the parts of a Sentinel URL give different databases ({db}, {d})")
            db = d
        nodes.extend(_host_port(h, DEFAULT_SENTINEL_PORT, setting) for h in hosts.split(",") if h.strip())
    if not nodes:
        raise ConfigurationError(f"{setting}: a Sentinel URL names at least one sentinel: sentinel://host:26379")
    master = options.get("master_name")
    if not master or not isinstance(master, str):
        raise ConfigurationError(f"{setting} is a Sentinel URL: set the transport option 'master_name' (the name "
                                 "the sentinels monitor) in broker_transport_options"
                                 + (" or result_backend_transport_options" if setting != "broker_url" else ""))
    kwargs = options.get("sentinel_kwargs")
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise ConfigurationError(f"transport option sentinel_kwargs must be a dict, not {kwargs!r}")
    others = options.get("min_other_sentinels", 0)
    if isinstance(others, bool) or not isinstance(others, int) or others < 0:
        raise ConfigurationError(f"transport option min_other_sentinels must be a whole number >= 0, not {others!r}")
    return Target("sentinel", url, tuple(nodes), user, password, db or 0, bool(ssl), master,
                  dict(kwargs) if kwargs is not None else None, others)


def _split(url: str, setting: str) -> Tuple[Optional[str], Optional[str], str, Optional[int], str]:
    """(user, password, host list, db or None, query) of `scheme://[user[:password]@]hosts[/db][?query]`."""
    rest = url.partition("://")[2].split("#", 1)[0]
    rest, _, query = rest.partition("?")
    netloc, slash, path = rest.partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    user = password = None
    if at:
        u, colon, p = userinfo.partition(":")
        user = _unquote(u) or None
        password = _unquote(p) if colon else None
    db: Optional[int] = None
    path = path.strip("/")
    if path:
        if not path.isdigit():
            raise ConfigurationError(f"{setting}: the path of {scheme_of(url)}:// URL is a database number, "
                                     f"not {path!r}")
        db = int(path)
    return user, password, hosts, db, query


def _host_port(text: str, default: int, setting: str) -> Tuple[str, int]:
    text = text.strip()
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise ConfigurationError(f"{setting}: no host in {text!r}")
    if not port_text:
        return _unquote(host), default
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigurationError(f"{setting}: bad port {port_text!r} in {text!r}")
    return _unquote(host), int(port_text)


def _unquote(text: str) -> str:
    """Percent-decoding (as urllib.parse.unquote, which a pure module may not import)."""
    if "%" not in text:
        return text
    out, i, raw = bytearray(), 0, text.encode()
    while i < len(raw):
        if raw[i:i + 1] == b"%" and i + 2 < len(raw) and _is_hex(raw[i + 1:i + 3]):
            out.append(int(raw[i + 1:i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return out.decode("utf-8", errors="replace")


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)
