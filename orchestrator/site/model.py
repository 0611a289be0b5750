"""The site model: one declarative description of a recording deployment.

The schema is data (pydantic models); :mod:`orchestrator.site.loader` attaches file and
line to every error. Cross-object rules (unique names, references, port overlaps,
listener conflicts) live in :func:`Site._cross_checks` and report the key path of the
offending value, e.g. ``media.nodes[1].ports``.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    model_validator,
)
from pydantic_core import PydanticCustomError

from ..errors import SecretError
from . import secrets as site_secrets

NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
# RFC 3261 §25.1 token, used for header names
TOKEN_RE = re.compile(r"^[A-Za-z0-9.!%*_+`'~-]+$")
# A pragmatic SIP URI check: scheme, optional user@, host (name, IPv4 or [IPv6]), port, params.
SIP_URI_RE = re.compile(
    r"^sips?:(?:[^@\s<>\"]+@)?"
    r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
    r"(?::(?P<port>[0-9]{1,5}))?(?:;[^\s<>\"?]*)?$"
)


MAX_SHOWN = 60  # characters of a offending value echoed in an error message


def _err(kind: str, msg: str, **ctx: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, msg, {k: short(v) if isinstance(v, str) else v
                                           for k, v in ctx.items()})


def short(v: str, limit: int = MAX_SHOWN) -> str:
    """A value for an error message: long ones cut, with their length."""
    return v if len(v) <= limit else f"{v[:limit]}… ({len(v)} characters)"


def _name(v: str) -> str:
    if not NAME_RE.match(v):
        raise _err("name", "'{v}' is not a valid name (expected lower-case letters, digits, '-' "
                   "or '_', starting with a letter, at most 32 characters)", v=v)
    return v


def _ip(v: str) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise _err("ip", "'{v}' is not an IP address", v=v) from None


def _private_ip(v: str) -> str:
    """Control listeners bind to loopback or a private address only (security by default)."""
    ip = ipaddress.ip_address(_ip(v))
    if ip.is_unspecified or not (ip.is_loopback or ip.is_private):
        raise _err("private_ip", "'{v}' is not a loopback or private address: control "
                   "listeners (NG, JSON-RPC, evapi, API) must not be exposed", v=v)
    return str(ip)


def _sip_uri(v: str) -> str:
    m = SIP_URI_RE.match(v)
    if not m:
        raise _err("sip_uri", "'{v}' is not a SIP URI (expected sip:[user@]host[:port][;params])",
                   v=v)
    if m.group("port") and not 0 < int(m.group("port")) < 65536:
        raise _err("sip_uri", "'{v}' has an invalid port", v=v)
    return v


def _regex(v: str) -> str:
    # Kamailio matches with POSIX extended regexes; Python's re is a close superset, so a
    # pattern Python rejects is certainly wrong. Double quotes would end the cfg string.
    if '"' in v:
        raise _err("regex", "pattern must not contain '\"'")
    try:
        re.compile(v)
    except re.error as exc:
        raise _err("regex", "'{v}' is not a valid regular expression: {e}", v=v, e=str(exc)) from None
    return v


def _header(v: str) -> str:
    if not TOKEN_RE.match(v):
        raise _err("header", "'{v}' is not a valid SIP header name", v=v)
    return v


def _abs_path(v: str) -> str:
    # rendered into Kamailio cfg strings and used as file names: absolute, no quoting issues
    if not v.startswith("/") or any(c in v for c in '"\\\n\r\0'):
        raise _err("abs_path", "'{v}' is not an absolute path (no quotes, backslashes or "
                   "line breaks)", v=v)
    return v


Name = Annotated[str, AfterValidator(_name)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
IP = Annotated[str, AfterValidator(_ip)]
PrivateIP = Annotated[str, AfterValidator(_private_ip)]
SipUri = Annotated[str, AfterValidator(_sip_uri)]
Regex = Annotated[str, AfterValidator(_regex)]
HeaderName = Annotated[str, AfterValidator(_header)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, str_max_length=1024)


# ---------------------------------------------------------------------------- edges
class Listen(Strict):
    """A Kamailio SIP listen socket."""

    proto: Literal["udp", "tcp", "tls"] = "udp"
    address: IP
    port: Port = 5060
    advertise: str | None = Field(None, description="advertised host[:port] (NAT)")


class JsonRpc(Strict):
    """Kamailio JSON-RPC over HTTP (xhttp + jsonrpcs)."""

    address: PrivateIP = "127.0.0.1"
    port: Port = 5071
    allow: list[str] = Field(default_factory=lambda: ["127.0.0.1/32"], max_length=64,
                             description="networks allowed to use JSON-RPC and evapi")

    @model_validator(mode="after")
    def _nets(self) -> JsonRpc:
        for i, net in enumerate(self.allow):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise _err("network", "allow[{i}]: '{n}' is not a network (expected e.g. "
                           "127.0.0.1/32)", i=i, n=net) from None
        return self


class Evapi(Strict):
    """The evapi TCP endpoint Kamailio emits call events on."""

    address: PrivateIP = "127.0.0.1"
    port: Port = 8448


class Trunk(Strict):
    """Where calls go: the upstream proxy/trunk an edge relays initial INVITEs to."""

    name: Name
    uri: SipUri
    match_ruri: Regex | None = Field(None, description="R-URI pattern choosing this trunk")


class Direction(Strict):
    """rtpengine interfaces for the caller side and the callee side (offer `direction=`)."""

    caller: Name
    callee: Name


class TlsFiles(Strict):
    certificate: str
    private_key: str


class Edge(Strict):
    """One Kamailio edge proxy."""

    name: Name
    listen: list[Listen] = Field(min_length=1, max_length=16)
    domains: list[str] = Field(default_factory=list, max_length=64)
    trunks: list[Trunk] = Field(min_length=1, max_length=256)
    default_trunk: Name | None = None
    media_set: int = Field(0, ge=0, le=255, description="rtpengine set used by this edge")
    rtp_direction: Direction | None = None
    jsonrpc: JsonRpc = Field(default_factory=JsonRpc)
    evapi: Evapi = Field(default_factory=Evapi)
    tls: TlsFiles | None = None
    children: int = Field(4, ge=1, le=64)
    shm_mb: int = Field(64, ge=16, le=65536)
    pkg_mb: int = Field(8, ge=4, le=1024)
    run_dir: str | None = Field(None, description="runtime dir (default /run/siprecctl/<name>)")

    @property
    def runtime_dir(self) -> str:
        return self.run_dir or f"/run/siprecctl/{self.name}"

    @property
    def trunk_default(self) -> Trunk:
        name = self.default_trunk or self.trunks[0].name
        return next(t for t in self.trunks if t.name == name)


# ---------------------------------------------------------------------------- media
class NgUdp(Strict):
    address: PrivateIP = "127.0.0.1"
    port: Port = 2223


class PortOnly(Strict):
    port: Port


class Interface(Strict):
    """An rtpengine media interface (``interface = name/address!advertised``)."""

    name: Name
    address: IP
    advertised: IP | None = None


class PortRange(Strict):
    port_min: Port
    port_max: Port

    @model_validator(mode="after")
    def _order(self) -> PortRange:
        if self.port_min >= self.port_max:
            raise _err("port_range", "port_min {a} must be below port_max {b}",
                       a=self.port_min, b=self.port_max)
        return self


class NodeRedis(Strict):
    """The node's Redis replication (rtpengine ``redis``, ``subscribe-keyspace``,
    ``redis-expires``; README "Scaling out"): the node writes every call it handles to its
    own database ``db``, and mirrors the calls of its ``peers`` (their databases, through
    keyspace notifications) as foreign calls it can carry on when a peer is lost."""

    db: int = Field(ge=0, le=15, description="the node's own Redis database (its calls)")
    peers: list[Name] = Field(default_factory=list, max_length=16, description="nodes of the "
                              "same set whose calls this node mirrors")
    expires: int = Field(86400, ge=60, le=604800, description="seconds a call's key lives "
                         "in Redis without an update (redis-expires)")


class MediaNode(Strict):
    """One rtpengine instance."""

    name: Name
    set: int = Field(0, ge=0, le=255)
    weight: int = Field(1, ge=1, le=100)
    ng: NgUdp = Field(default_factory=NgUdp, description="UDP NG (used by Kamailio)")
    ng_tcp: PortOnly | None = Field(None, description="TCP NG listener (bencode only)")
    http: PortOnly | None = Field(None, description="HTTP listener: /metrics and POST /ng")
    transport: Literal["udp", "tcp", "http"] = Field(
        "udp", description="NG transport siprecctl uses for this node")
    interfaces: list[Interface] = Field(min_length=1, max_length=16)
    ports: PortRange
    threads: int = Field(0, ge=0, le=256, description="0: one per core")
    redis: NodeRedis | None = Field(None, description="Redis replication (needs the "
                                    "top-level redis section)")


class LegacyMediaRedis(Strict):
    """The former ``media.redis`` (one database for every node): refused with a pointer to
    the top-level ``redis`` section and ``media.nodes[].redis``."""

    address: str
    port: int = 6379
    db: int = 1


class Timeouts(Strict):
    timeout: int = Field(60, ge=1, description="no RTP at all for this long ends a call")
    silent_timeout: int = Field(3600, ge=1)
    final_timeout: int = Field(0, ge=0, description="hard call length limit; 0 = off")
    offer_timeout: int = Field(3600, ge=1)


class MediaRecording(Strict):
    """Where and how rtpengine writes local recordings."""

    method: Literal["pcap"] = Field(
        "pcap", description="only pcap works without the kernel module (proc records nothing)")
    dir: str = "/var/spool/siprecctl"
    format: Literal["raw", "eth"] = "raw"


class Media(Strict):
    nodes: list[MediaNode] = Field(min_length=1, max_length=256)
    recording: MediaRecording = Field(default_factory=MediaRecording)
    delete_delay: int = Field(30, ge=0, le=3600)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    # README "After a node loss": the controller's NG pings of every node
    ping_interval: float = Field(1.0, ge=0.1, le=30, description="seconds between the "
                                 "controller's NG pings of each rtpengine node")
    ping_failures: int = Field(2, ge=1, le=10, description="missed (or refused) pings in a "
                               "row after which a node is lost and its calls relocated")
    redis: LegacyMediaRedis | None = Field(None, description="replaced by the top-level "
                                           "redis section and media.nodes[].redis")


# ---------------------------------------------------------------------------- recording
class HeaderMatch(Strict):
    name: HeaderName
    pattern: Regex = ".*"


class Match(Strict):
    """All given conditions must hold (Kamailio regex match)."""

    caller: Regex | None = Field(None, description="pattern on the From URI")
    callee: Regex | None = Field(None, description="pattern on the To URI")
    ruri: Regex | None = Field(None, description="pattern on the Request-URI")
    header: HeaderMatch | None = None
    trunk: Name | None = Field(None, description="name of the trunk the call is routed to")


class Rule(Strict):
    """A policy rule; the first rule whose match holds decides."""

    name: Name
    match: Match = Field(default_factory=Match)
    record: bool = True
    local: bool | None = Field(None, description="override recording.local")
    siprec: Name | None = Field(None, description="SRS group (override recording.siprec)")
    sample: int = Field(100, ge=0, le=100, description="percentage of matching calls recorded")


class SrsServer(Strict):
    uri: SipUri
    transport: Literal["udp", "tcp"] = "udp"


class SrsGroup(Strict):
    """A session recording group: ``simultaneous`` sessions per call, each on its own SRS
    chosen by ``strategy``; a session moves to another SRS of the group on timeout, 4xx-6xx,
    transport error, or when its SRS stops answering probes."""

    name: Name
    servers: list[SrsServer] = Field(min_length=1, max_length=16)
    required: bool | Literal["all"] = Field(
        False, description="end the call when no session (true) or not every session "
        "('all') could be established")
    timeout: float = Field(5.0, gt=0, le=60, description="seconds to wait for an SRS answer "
                           "(INVITE, and every in-dialog request)")
    no_failover_codes: list[Annotated[int, Field(ge=300, le=699)]] = Field(
        default_factory=list, max_length=400)
    simultaneous: int = Field(1, ge=1, le=8, description="recording sessions per call, each "
                              "on a different SRS")
    strategy: Literal["hunt", "round-robin", "least-busy"] = Field(
        "hunt", description="hunt: in order; round-robin: rotate per group; least-busy: the "
        "SRS with the fewest active sessions of this controller")
    probe_interval: float = Field(1.0, ge=0, le=60, description="seconds between OPTIONS "
                                  "probes of each SRS (0: no probes)")
    probe_failures: int = Field(2, ge=1, le=10, description="unanswered probes in a row "
                                "before an SRS counts as down")


class Recording(Strict):
    default: bool = Field(False, description="record calls no rule matches")
    local: bool = Field(True, description="local (rtpengine pcap) recording of recorded calls")
    siprec: Name | None = Field(None, description="default SRS group of recorded calls")
    rules: list[Rule] = Field(default_factory=list, max_length=1000)
    srs_groups: list[SrsGroup] = Field(default_factory=list, max_length=100)
    metadata_headers: list[HeaderName] = Field(default_factory=list, max_length=32)
    required_metadata: list[str] = Field(
        default_factory=lambda: ["call-id", "from", "to"], max_length=64,
        description="keys every local recording's metadata must hold (checked by collect)")


# ---------------------------------------------------------------------------- controller
class ApiToken(Strict):
    """A bearer token of the controller API, in ``<secrets_dir>/api-<name>.token``."""

    name: Name
    role: Literal["operator", "readonly"] = Field(
        description="operator: every request; readonly: GET only (dashboards)")


def _default_tokens() -> list[ApiToken]:
    return [ApiToken(name="operator", role="operator"),
            ApiToken(name="dashboard", role="readonly")]


class Api(Strict):
    address: PrivateIP = "127.0.0.1"
    port: Port = 8090
    tls: TlsFiles | None = Field(None, description="serve HTTPS with this certificate/key")
    tokens: list[ApiToken] = Field(default_factory=_default_tokens, min_length=1,
                                   max_length=32)


class ControllerInstance(Strict):
    """One controller of an active/standby pair (both run; the lease holder acts)."""

    name: Name
    api: Api = Field(default_factory=Api)


class Controller(Strict):
    api: Api = Field(default_factory=Api)
    store: str = "/var/lib/siprecctl/state.sqlite"
    instances: list[ControllerInstance] = Field(
        default_factory=list, max_length=4, description="the controllers of an active/standby "
        "pair (state in Redis: serve --redis); empty: one controller")
    max_setup_lag: float | None = Field(
        None, gt=0, le=60, description="shed (a counted loss) the set-up of an answered call "
        "that waited longer than this in the controller's queue; unset: set it up late and "
        "count the late part")
    max_pending: int = Field(5000, ge=10, le=1_000_000, description="answered calls waiting "
                             "for set-up beyond which new ones are shed")
    edge_lost_after: float = Field(10.0, ge=1, le=3600, description="seconds an edge's "
                                   "evapi link stays down (reconnects failing) before the "
                                   "edge is lost and its calls' recordings closed and counted")


# ---------------------------------------------------------------------------- redis
class RedisServer(Strict):
    """The site's Redis server (Debian redis-server 7.0): rtpengine's call replication and
    the controller pair's shared state. Authenticated always: the password is in
    ``auth_file`` (owner-only; ``siprecctl render --secrets`` creates it)."""

    address: PrivateIP
    port: Port = 6379
    auth_file: AbsPath | None = Field(None, description="owner-only file holding the "
                                      "password (default <secrets_dir>/redis.secret)")
    controller_db: int = Field(0, ge=0, le=15, description="the controller pair's database")


# ---------------------------------------------------------------------------- security
class Security(Strict):
    """Where siprecctl keeps the secrets it generates (README "Security")."""

    secrets_dir: AbsPath = Field(
        "/etc/siprecctl/secrets",
        description="owner-only directory of the API tokens and the edges' evapi/JSON-RPC "
                    "secrets (created 0700; files 0600)")


# ---------------------------------------------------------------------------- lab
IFNAME_RE = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def _ifname_part(v: str) -> str:
    if not IFNAME_RE.match(v):
        raise _err("ifname", "'{v}' is not usable in an interface or namespace name "
                   "(expected 1-8 lower-case letters or digits, starting with a letter)", v=v)
    return v


def _lab_subnet(v: str) -> str:
    try:
        net = ipaddress.IPv4Network(v)
    except ValueError:
        raise _err("subnet", "'{v}' is not an IPv4 network (expected e.g. 198.18.0.0/24)",
                   v=v) from None
    if not net.is_private or net.prefixlen > 29:
        raise _err("subnet", "'{v}' must be a private network of at least 8 addresses (the "
                   "lab's default is 198.18.0.0/24, RFC 2544's benchmarking range)", v=v)
    return str(net)


class Lab(Strict):
    """Where ``siprecctl lab`` puts its hosts: one network namespace each on a bridge of
    the lab's own (only the lab uses this section; it does not change rendered configs)."""

    subnet: Annotated[str, AfterValidator(_lab_subnet)] = "198.18.0.0/24"
    bridge: Annotated[str, AfterValidator(_ifname_part)] = Field(
        "slab0", description="the bridge, in the lab's own switch namespace")
    netns_prefix: Annotated[str, AfterValidator(_ifname_part)] = Field(
        "slab", description="namespaces <prefix>-caller, -callee, -edge, -srs1, -srs2, -sw")
# ---------------------------------------------------------------------------- accounting
class Accounting(Strict):
    """The edges' own call records (Kamailio ``acc``; README "Audit")."""

    dir: AbsPath = Field(
        "/var/log/siprecctl/accounting",
        description="each edge appends its call records to <dir>/<edge>/calls_<process>.log "
                    "(create <dir>/<edge> writable by Kamailio only, mode 0750 or 0700)")

    def edge_dir(self, edge: str) -> str:
        """The directory of one edge's records (its ``calls_<process>.log`` files)."""
        return f"{self.dir.rstrip('/')}/{edge}"


# ---------------------------------------------------------------------------- site
class Site(Strict):
    """A whole deployment: edges, media nodes, recording policy, controller."""

    version: Literal[1] = 1
    name: Name
    edges: list[Edge] = Field(min_length=1, max_length=64)
    media: Media
    recording: Recording = Field(default_factory=Recording)
    controller: Controller = Field(default_factory=Controller)
    security: Security = Field(default_factory=Security)
    lab: Lab = Field(default_factory=Lab)
    redis: RedisServer | None = Field(None, description="required by more than one "
                                      "controller instance and by node replication")
    accounting: Accounting = Field(default_factory=Accounting)

    # Errors found by _cross_checks carry their own key path: (path, message).
    @model_validator(mode="after")
    def _cross(self) -> Site:
        problems = list(_cross_checks(self))
        if problems:
            raise _err("site_cross", "{problems}", problems=problems)
        return self

    def node(self, name: str) -> MediaNode:
        return next(n for n in self.media.nodes if n.name == name)

    def nodes_in_set(self, setid: int) -> list[MediaNode]:
        return [n for n in self.media.nodes if n.set == setid]

    def srs_group(self, name: str) -> SrsGroup:
        return next(g for g in self.recording.srs_groups if g.name == name)

    @property
    def redis_auth_file(self) -> str:
        """The Redis password file (``redis.auth_file``, else in ``secrets_dir``)."""
        if self.redis is not None and self.redis.auth_file:
            return self.redis.auth_file
        return f"{self.security.secrets_dir.rstrip('/')}/redis.secret"


def _dupes(items: list[Any], attr: str, base: str) -> list[tuple[str, str]]:
    seen: dict[str, int] = {}
    out = []
    for i, it in enumerate(items):
        v = getattr(it, attr)
        if v in seen:
            out.append((f"{base}[{i}].{attr}",
                        f"duplicate name '{v}' (already used by {base}[{seen[v]}])"))
        else:
            seen[v] = i
    return out


def _cross_checks(site: Site) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    p += _dupes(site.edges, "name", "edges")
    p += _dupes(site.media.nodes, "name", "media.nodes")
    p += _dupes(site.recording.rules, "name", "recording.rules")
    p += _dupes(site.recording.srs_groups, "name", "recording.srs_groups")
    trunks = set()
    for ei, e in enumerate(site.edges):
        p += _dupes(e.trunks, "name", f"edges[{ei}].trunks")
        trunks |= {t.name for t in e.trunks}
        names = [t.name for t in e.trunks]
        if e.default_trunk and e.default_trunk not in names:
            p.append((f"edges[{ei}].default_trunk",
                      f"unknown trunk '{e.default_trunk}' (defined: {', '.join(names)})"))
        nodes = site.nodes_in_set(e.media_set)
        if not nodes:
            sets = sorted({n.set for n in site.media.nodes})
            p.append((f"edges[{ei}].media_set",
                      f"no rtpengine node in set {e.media_set} (sets: {sets})"))
        if e.rtp_direction:
            for side in ("caller", "callee"):
                iface = getattr(e.rtp_direction, side)
                for n in nodes:
                    if iface not in {i.name for i in n.interfaces}:
                        p.append((f"edges[{ei}].rtp_direction.{side}",
                                  f"node '{n.name}' has no interface '{iface}'"))
        if any(ls.proto == "tls" for ls in e.listen) and e.tls is None:
            p.append((f"edges[{ei}].tls", "a tls listen socket needs tls.certificate and "
                      "tls.private_key"))
    groups = {g.name for g in site.recording.srs_groups}
    if site.recording.siprec and site.recording.siprec not in groups:
        p.append(("recording.siprec", f"unknown SRS group '{site.recording.siprec}' "
                  f"(defined: {', '.join(sorted(groups)) or 'none'})"))
    p += _dupes(site.controller.instances, "name", "controller.instances")
    apis = [(i.api.address, i.api.port) for i in site.controller.instances]
    for ci, a in enumerate(apis):
        if a in apis[:ci]:
            p.append((f"controller.instances[{ci}].api", f"{a[0]}:{a[1]} is the API listener "
                      f"of controller.instances[{apis.index(a)}] too"))
    for gi, g in enumerate(site.recording.srs_groups):
        if g.simultaneous > len(g.servers):
            p.append((f"recording.srs_groups[{gi}].simultaneous",
                      f"{g.simultaneous} sessions per call need as many servers "
                      f"(the group has {len(g.servers)})"))
        uris = [s.uri for s in g.servers]
        for u in sorted({u for u in uris if uris.count(u) > 1}):
            p.append((f"recording.srs_groups[{gi}].servers", f"server {u} listed twice"))
    for ri, r in enumerate(site.recording.rules):
        if r.siprec and r.siprec not in groups:
            p.append((f"recording.rules[{ri}].siprec", f"unknown SRS group '{r.siprec}' "
                      f"(defined: {', '.join(sorted(groups)) or 'none'})"))
        if r.match.trunk and r.match.trunk not in trunks:
            p.append((f"recording.rules[{ri}].match.trunk", f"unknown trunk '{r.match.trunk}' "
                      f"(defined: {', '.join(sorted(trunks))})"))
    for ni, n in enumerate(site.media.nodes):
        p += _dupes(n.interfaces, "name", f"media.nodes[{ni}].interfaces")
        if n.transport == "tcp" and n.ng_tcp is None:
            p.append((f"media.nodes[{ni}].transport", "transport tcp needs ng_tcp.port"))
        if n.transport == "http" and n.http is None:
            p.append((f"media.nodes[{ni}].transport", "transport http needs http.port"))
    # RTP port ranges of nodes sharing a media address must not overlap.
    for ni, n in enumerate(site.media.nodes):
        addrs = {i.address for i in n.interfaces}
        for mi in range(ni):
            m = site.media.nodes[mi]
            shared = addrs & {i.address for i in m.interfaces}
            if shared and n.ports.port_min <= m.ports.port_max and m.ports.port_min <= n.ports.port_max:
                p.append((f"media.nodes[{ni}].ports",
                          f"ports {n.ports.port_min}-{n.ports.port_max} overlap media.nodes[{mi}]"
                          f" ({m.ports.port_min}-{m.ports.port_max}) on {sorted(shared)[0]}"))
    p += _listener_conflicts(site)
    p += _dupes(site.controller.api.tokens, "name", "controller.api.tokens")
    p += _redis_checks(site)
    # nothing siprecctl writes may land in a recording directory
    rec = site.media.recording.dir.rstrip("/") + "/"
    for path, what in (("security.secrets_dir", site.security.secrets_dir),
                       ("controller.store", site.controller.store),
                       ("accounting.dir", site.accounting.dir)):
        if (what.rstrip("/") + "/").startswith(rec):
            p.append((path, f"'{short(what)}' is inside the recording directory "
                      f"{site.media.recording.dir}: siprecctl never writes there"))
    acc = site.accounting.dir.rstrip("/") + "/"
    if acc.startswith(site.security.secrets_dir.rstrip("/") + "/"):
        p.append(("accounting.dir", f"'{short(site.accounting.dir)}' is inside "
                  f"security.secrets_dir: Kamailio writes the call records, and nothing but "
                  "siprecctl's secrets belongs there"))
    if rec.startswith(acc):
        p.append(("accounting.dir", f"the recording directory {site.media.recording.dir} is "
                  f"inside '{short(site.accounting.dir)}': keep the call records apart from "
                  "the recordings"))
    return p


def _redis_checks(site: Site) -> list[tuple[str, str]]:
    """Redis and replication: who needs Redis, which databases, which peers."""
    p: list[tuple[str, str]] = []
    if site.media.redis is not None:
        p.append(("media.redis", "media.redis is replaced by the top-level redis section "
                  "(address, port, auth_file) and media.nodes[].redis (db, peers) per node: "
                  "rtpengine writes every call of a node to its own database, so nodes must "
                  "not share one"))
    nodes = {n.name: (i, n) for i, n in enumerate(site.media.nodes)}
    if len(site.controller.instances) > 1 and site.redis is None:
        p.append(("controller.instances", f"{len(site.controller.instances)} controller "
                  "instances need the top-level redis section (their shared state and the "
                  "leader lease)"))
    dbs: dict[int, str] = {}
    if site.redis is not None:
        dbs[site.redis.controller_db] = "redis.controller_db"
    for ni, n in enumerate(site.media.nodes):
        if n.redis is None:
            continue
        where = f"media.nodes[{ni}].redis"
        if site.redis is None:
            p.append((where, "node replication needs the top-level redis section (address, "
                      "port, auth_file)"))
        if n.redis.db in dbs:
            p.append((f"{where}.db", f"database {n.redis.db} is already used by "
                      f"{dbs[n.redis.db]}"))
        else:
            dbs[n.redis.db] = f"media.nodes[{ni}].redis.db"
        for pi, peer in enumerate(n.redis.peers):
            at = f"{where}.peers[{pi}]"
            if peer == n.name:
                p.append((at, f"node '{peer}' cannot mirror itself"))
            elif peer not in nodes:
                p.append((at, f"unknown node '{peer}' (defined: {', '.join(nodes)})"))
            elif nodes[peer][1].set != n.set:
                p.append((at, f"node '{peer}' is in set {nodes[peer][1].set}, not in set "
                          f"{n.set}: replication only between nodes of one set (Kamailio "
                          f"sends a call's later commands to its set)"))
            elif nodes[peer][1].redis is None:
                p.append((at, f"node '{peer}' has no redis.db: it writes no calls to mirror"))
            else:
                # a foreign call is restored on the interface of the same name (rtpengine
                # 10.5 redis.c: "logical interface not known" otherwise)
                missing = {i.name for i in nodes[peer][1].interfaces} - \
                    {i.name for i in n.interfaces}
                if missing:
                    p.append((at, f"node '{peer}' has interface(s) {', '.join(sorted(missing))}"
                              f" that this node lacks: its calls could not be restored here"))
        p += [(f"{where}.peers", f"peer '{x}' listed twice")
              for x in sorted({x for x in n.redis.peers if n.redis.peers.count(x) > 1})]
    if site.redis is not None:
        try:
            site_secrets.check_owner_only(site.redis_auth_file)
        except SecretError as exc:
            p.append(("redis.auth_file" if site.redis.auth_file else "redis", str(exc)))
    return p


def _listeners(site: Site) -> list[tuple[str, str, str, int]]:
    """(key path, proto, address, port) of every socket the site binds."""
    out: list[tuple[str, str, str, int]] = []
    for ei, e in enumerate(site.edges):
        for li, ls in enumerate(e.listen):
            out.append((f"edges[{ei}].listen[{li}]", ls.proto if ls.proto == "udp" else "tcp",
                        ls.address, ls.port))
        out.append((f"edges[{ei}].jsonrpc", "tcp", e.jsonrpc.address, e.jsonrpc.port))
        out.append((f"edges[{ei}].evapi", "tcp", e.evapi.address, e.evapi.port))
    for ni, n in enumerate(site.media.nodes):
        out.append((f"media.nodes[{ni}].ng", "udp", n.ng.address, n.ng.port))
        if n.ng_tcp:
            out.append((f"media.nodes[{ni}].ng_tcp", "tcp", n.ng.address, n.ng_tcp.port))
        if n.http:
            out.append((f"media.nodes[{ni}].http", "tcp", n.ng.address, n.http.port))
    out.append(("controller.api", "tcp", site.controller.api.address, site.controller.api.port))
    return out


def _listener_conflicts(site: Site) -> list[tuple[str, str]]:
    seen: dict[tuple[str, str, int], str] = {}
    p = []
    for path, proto, addr, port in _listeners(site):
        key = (proto, addr, port)
        if key in seen and seen[key] != path:
            p.append((path, f"{proto} {addr}:{port} is already used by {seen[key]}"))
        seen.setdefault(key, path)
    # the same socket listed twice within one listen list is also a conflict (dedup above
    # only compares different paths)
    return p
