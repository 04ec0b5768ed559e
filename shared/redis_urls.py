"""Where a Redis store lives: one server, a master watched by Sentinel, or a Redis Cluster.

A store's URL names its topology by its scheme, so the same variable (BROKER_REDIS_URL, ...)
moves a store from one server to Sentinel or Cluster without another setting:

    redis://[:password@]host:port/db            one server (rediss:// for TLS)
    sentinel://[:password@]h1:26379,h2:26379/db?master=NAME
                                                the master Sentinel calls NAME; the password
                                                is the data servers' (sentinels need none)
    cluster://[:password@]h1:7000,h2:7001       a Redis Cluster; any reachable nodes will do,
                                                the client learns the rest (no db: Cluster has DB 0 only)

Rules: every host is host:port; a sentinel URL must name its master; a cluster URL carries no
DB number. The broker cannot be a Cluster (kombu and Celery's result backend do not speak it).

Rejected: kombu's own sentinel syntax (`sentinel://h1:26379;sentinel://h2:26379` plus a
separate `master_name` transport option), because it needs a second variable per store and
redis-py does not read it; and `redis+sentinel://` (the `limits` library's), which is longer
and reads as if it were a kind of redis:// URL. celery_url() translates to kombu's form."""

from dataclasses import dataclass
from urllib.parse import parse_qs, quote, unquote, urlsplit

SINGLE, SENTINEL, CLUSTER = "single", "sentinel", "cluster"
_SCHEMES = {"redis": SINGLE, "rediss": SINGLE, "sentinel": SENTINEL, "cluster": CLUSTER}


class BadRedisUrl(ValueError):
    """A store URL this module cannot read; the message names what is wrong."""


@dataclass(frozen=True)
class RedisTarget:
    kind: str
    hosts: tuple[tuple[str, int], ...]
    db: int = 0
    password: str | None = None
    master: str | None = None
    url: str = ""

    @property
    def sentinel(self) -> bool:
        return self.kind == SENTINEL

    @property
    def cluster(self) -> bool:
        return self.kind == CLUSTER

    def with_db(self, db: int) -> "RedisTarget":
        if self.cluster:
            raise BadRedisUrl("a Redis Cluster has DB 0 only, so it cannot hold one DB per store (REDIS_URL)")
        return RedisTarget(self.kind, self.hosts, db, self.password, self.master, _replace_db(self.url, db))

    def celery_url(self) -> str:
        """The URL as kombu and Celery read it (Sentinel: one `sentinel://` per host, `;`-joined;
        the master's name goes in the transport options, see celery_transport_options)."""
        if not self.sentinel:
            return self.url
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return ";".join(f"sentinel://{auth}{host}:{port}/{self.db}" for host, port in self.hosts)

    def celery_transport_options(self) -> dict:
        return {"master_name": self.master} if self.sentinel else {}


def parse(url: str) -> RedisTarget:
    parts = urlsplit(url)
    kind = _SCHEMES.get(parts.scheme)
    if kind is None:
        raise BadRedisUrl(f"unknown Redis URL scheme {parts.scheme!r}: use redis://, rediss://, sentinel:// or cluster://")
    if kind == SINGLE:
        return RedisTarget(SINGLE, ((parts.hostname or "127.0.0.1", parts.port or 6379),),
                           _db(parts.path), _password(parts.password), url=url)
    netloc = parts.netloc.rpartition("@")[2]
    hosts = tuple(_host_port(item, url) for item in netloc.split(",") if item)
    if not hosts:
        raise BadRedisUrl(f"{url!r} names no host")
    password = _password(parts.netloc.rpartition("@")[0].partition(":")[2] or None)
    if kind == CLUSTER:
        if parts.path.strip("/") not in ("", "0"):
            raise BadRedisUrl("a Redis Cluster has DB 0 only: drop the /DB from the cluster:// URL")
        return RedisTarget(CLUSTER, hosts, 0, password, url=url)
    master = parse_qs(parts.query).get("master", [""])[0]
    if not master:
        raise BadRedisUrl(f"a sentinel:// URL must name its master: {url}?master=NAME")
    return RedisTarget(SENTINEL, hosts, _db(parts.path), password, master, url=url)


def _host_port(item: str, url: str) -> tuple[str, int]:
    host, _, port = item.rpartition(":")
    if not host or not port.isdigit():
        raise BadRedisUrl(f"every host in {url!r} must be host:port (got {item!r})")
    return host, int(port)


def _db(path: str) -> int:
    value = path.strip("/") or "0"
    if not value.isdigit():
        raise BadRedisUrl(f"the DB number must be an integer (got {value!r})")
    return int(value)


def _password(value: str | None) -> str | None:
    return unquote(value) if value else None


def _replace_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return parts._replace(path=f"/{db}").geturl()
