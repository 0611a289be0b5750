"""The lab's network (pyroute2): one network namespace per host, all on a bridge that lives
in a namespace of its own, so no lab packet touches the machine's own stack or firewall::

    <prefix>-sw      the switch: bridge <bridge>, one veth port per host (named after it)
    <prefix>-<host>  lo up, eth0 (the veth peer) with the host's address on the lab subnet

Every object is created by name and removed by name; :func:`destroy` tolerates what is
already gone, so a half-built or crashed lab is torn down by the same call. Faults for the
drills: a host's link down (its switch port), a blackhole route, random UDP loss.

Loss uses an nftables ``numgen random`` rule (pyroute2's nftables socket) in the receiving
host's namespace rather than netem: this machine's kernel is built without netem
(``CONFIG_NET_SCH_NETEM`` unset), and nf_tables is in every kernel Debian ships.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import struct
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import LabError

__all__ = ["HOSTS", "NetPlan", "clear_loss", "create", "destroy", "entered", "existing",
           "link_up", "pids_in", "set_blackhole", "set_link", "set_loss", "unavailable"]

HOSTS = ("caller", "callee", "edge", "srs1", "srs2")
NETNS_DIR = "/run/netns"
_NFT_TABLE = "siprecctl_lab"


@dataclass(frozen=True)
class NetPlan:
    """Names and addresses of the lab network (host ``i`` of :data:`HOSTS` gets the
    subnet's address ``i + 2``)."""

    prefix: str
    bridge: str
    subnet: str
    hosts: tuple[str, ...] = HOSTS

    @classmethod
    def from_settings(cls, lab: Any) -> NetPlan:
        return cls(lab.netns_prefix, lab.bridge, lab.subnet)

    @property
    def switch(self) -> str:
        return f"{self.prefix}-sw"

    def netns(self, host: str) -> str:
        return f"{self.prefix}-{host}"

    def address(self, host: str) -> str:
        net = ipaddress.IPv4Network(self.subnet)
        return str(net.network_address + 2 + self.hosts.index(host))

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    def namespaces(self) -> list[str]:
        return [self.switch] + [self.netns(h) for h in self.hosts]


def unavailable() -> str | None:
    """Why network namespaces cannot be used here (None when they can)."""
    if os.geteuid() != 0:
        return "not running as root"
    try:
        import pyroute2  # noqa: F401
    except ImportError as exc:  # a broken install; the fallback still works
        return f"pyroute2 missing ({exc})"
    if not os.path.exists("/proc/self/ns/net"):
        return "the kernel has no network namespaces"
    return None


def existing(names: Sequence[str]) -> list[str]:
    """Those of ``names`` that exist as named namespaces."""
    return [n for n in names if os.path.exists(os.path.join(NETNS_DIR, n))]


def _ipr(netns: str) -> Any:
    from pyroute2 import IPRoute

    return IPRoute(netns=netns)


def _idx(ipr: Any, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise LabError(f"interface {ifname} not found")
    return int(found[0])


def create(plan: NetPlan, record: Callable[[str], None]) -> None:
    """Build the namespaces, the bridge and one veth pair per host. ``record(name)`` is
    called *before* each namespace is created, so a registry knows it even if we crash."""
    from pyroute2 import netns
    from pyroute2.netlink.exceptions import NetlinkError

    taken = existing(plan.namespaces())
    if taken:
        raise LabError(f"network namespaces {', '.join(taken)} exist already (another lab "
                       f"with netns_prefix '{plan.prefix}'? `siprecctl lab down` removes "
                       "the leftovers of one)")
    try:
        for name in plan.namespaces():
            record(name)
            netns.create(name)
        with _ipr(plan.switch) as sw:
            sw.link("set", index=_idx(sw, "lo"), state="up")
            sw.link("add", ifname=plan.bridge, kind="bridge")
            br = _idx(sw, plan.bridge)
            sw.link("set", index=br, state="up")
            for host in plan.hosts:
                # the peer is created directly inside the host's namespace
                sw.link("add", ifname=host, kind="veth",
                        peer={"ifname": "eth0", "net_ns_fd": plan.netns(host)})
                sw.link("set", index=_idx(sw, host), master=br, state="up")
        for host in plan.hosts:
            with _ipr(plan.netns(host)) as ipr:
                ipr.link("set", index=_idx(ipr, "lo"), state="up")
                eth = _idx(ipr, "eth0")
                ipr.addr("add", index=eth, address=plan.address(host),
                         prefixlen=plan.prefixlen)
                ipr.link("set", index=eth, state="up")
                # the subnet's route comes with the address; nothing else is routed: no
                # default route, so no lab packet can leave the lab
    except (OSError, NetlinkError) as exc:
        raise LabError(f"cannot build the lab network: {exc}") from exc


def destroy(names: Sequence[str]) -> list[str]:
    """Kill what runs in the namespaces ``names`` and remove them; returns what was
    removed. Namespaces already gone are skipped (idempotent)."""
    import signal

    from pyroute2 import netns

    removed = []
    for name in existing(names):
        for pid in pids_in(name):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            netns.remove(name)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise LabError(f"cannot remove network namespace {name}: {exc}") from exc
        removed.append(name)
    return removed


def pids_in(name: str) -> list[int]:
    """Processes (not zombies) whose network namespace is the named one."""
    try:
        st = os.stat(os.path.join(NETNS_DIR, name))
    except FileNotFoundError:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            ns = os.stat(f"/proc/{entry}/ns/net")
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if (ns.st_dev, ns.st_ino) == (st.st_dev, st.st_ino) and state != "Z":
            out.append(int(entry))
    return out


@contextlib.contextmanager
def entered(name: str | None) -> Iterator[None]:
    """Run the block with the calling *thread* inside namespace ``name`` (nothing for
    None): sockets it creates live there for good; threads it starts inherit it. The
    thread's own namespace is restored after the block."""
    if name is None:
        yield
        return
    from pyroute2 import netns

    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        try:
            netns.setns(os.path.join(NETNS_DIR, name), flags=0)
        except OSError as exc:
            raise LabError(f"cannot enter network namespace {name}: {exc}") from exc
        yield
    finally:
        netns.setns(own, flags=0)
        os.close(own)


def _in_thread(name: str, fn: Callable[[], Any]) -> Any:
    """``fn()`` in a fresh thread inside namespace ``name`` (netlink sockets bind to the
    namespace they are created in); its exception is re-raised here."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            with entered(name):
                box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, name=f"netns-{name}")
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box.get("value")


def link_up(plan: NetPlan, host: str) -> bool | None:
    """Operational state of ``host``'s eth0 (None when its namespace is gone)."""
    if not existing([plan.netns(host)]):
        return None
    with _ipr(plan.netns(host)) as ipr:
        link = ipr.get_links(_idx(ipr, "eth0"))[0]
        return bool(link.get_attr("IFLA_OPERSTATE") == "UP")


def set_link(plan: NetPlan, host: str, up: bool) -> None:
    """Pull (or put back) ``host``'s cable: its port on the switch down (or up)."""
    with _ipr(plan.switch) as sw:
        sw.link("set", index=_idx(sw, host), state="up" if up else "down")


def set_blackhole(plan: NetPlan, on_host: str, target: str, add: bool) -> None:
    """A blackhole route on ``on_host`` for ``target``/32: its packets there are dropped
    at once (the sender sees EINVAL), as after a routing mistake. ``add=False`` removes it
    (already gone is fine)."""
    from pyroute2.netlink.exceptions import NetlinkError

    with _ipr(plan.netns(on_host)) as ipr:
        try:
            ipr.route("add" if add else "del", dst=f"{target}/32", type="blackhole")
        except NetlinkError as exc:
            if add or exc.code not in (errno.ESRCH, errno.ENOENT):
                raise LabError(f"blackhole route to {target} on {on_host}: {exc}") from exc


def _nft_cmp(op: int, data: bytes) -> dict[str, Any]:
    from pyroute2.nftables.expressions import genex

    return genex("cmp", {"sreg": 1, "op": op, "data": {"attrs": [("NFTA_DATA_VALUE", data)]}})


def set_loss(plan: NetPlan, host: str, percent: int, port_min: int, port_max: int) -> None:
    """Drop ``percent`` % of the UDP packets arriving at ``host`` for ports
    ``port_min``-``port_max`` (an nftables input rule in its namespace)."""
    if not 0 < percent < 100:
        raise LabError(f"loss {percent} %: expected 1-99")
    from pyroute2.nftables.expressions import genex, verdict
    from pyroute2.nftables.main import NFTables

    # NFT_CMP_EQ 0, LT 2, LTE 3, GTE 5; numgen writes host-order u32s below 100, so a
    # little-endian operand compares right byte by byte. (pyroute2's genex names numgen's
    # attributes NFTA_NUMGEN_*, the kernel's are NFTA_NG_*: built by hand.)
    numgen = {"attrs": [("NFTA_EXPR_NAME", "numgen"), ("NFTA_EXPR_DATA", {"attrs": [
        ("NFTA_NG_DREG", 1), ("NFTA_NG_MODULUS", 100), ("NFTA_NG_TYPE", 1),
        ("NFTA_NG_OFFSET", 0)]})]}
    exprs = [
        [genex("meta", {"dreg": 1, "key": 16}), _nft_cmp(0, bytes([17]))],  # l4proto udp
        [genex("payload", {"dreg": 1, "base": 2, "offset": 2, "len": 2}),  # dport
         _nft_cmp(5, struct.pack(">H", port_min)), _nft_cmp(3, struct.pack(">H", port_max))],
        [numgen, _nft_cmp(2, struct.pack("<I", percent))],
        verdict(0),  # NF_DROP
    ]

    def apply() -> None:
        nft = NFTables(nfgen_family=2)
        try:
            nft.table("add", name=_NFT_TABLE)
            nft.chain("add", table=_NFT_TABLE, name="impair", hook="input", type="filter",
                      priority=0)
            nft.rule("add", table=_NFT_TABLE, chain="impair", expressions=exprs)
        finally:
            nft.close()

    try:
        _in_thread(plan.netns(host), apply)
    except Exception as exc:
        raise LabError(f"cannot impair {host}'s link: {exc}") from exc


def clear_loss(plan: NetPlan, host: str) -> None:
    """Remove :func:`set_loss`'s rule (already gone is fine)."""
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.nftables.main import NFTables

    def apply() -> None:
        nft = NFTables(nfgen_family=2)
        try:
            nft.table("del", name=_NFT_TABLE)
        except NetlinkError as exc:
            if exc.code != errno.ENOENT:
                raise
        finally:
            nft.close()

    if existing([plan.netns(host)]):
        _in_thread(plan.netns(host), apply)
