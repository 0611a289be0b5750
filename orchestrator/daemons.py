"""Process supervision: the real daemons (and our own children) as foreground processes.

No shell: argument lists only. Each process gets its own session (so a stop reaches its
children too), its output in a log file, a readiness probe and a bounded stop (SIGTERM,
then SIGKILL). Used by ``siprecctl check`` (smoke starts), the lab (rtpengine, Kamailio,
the controller, sipp) and the integration tests::

    with Rtpengine(conf, workdir=tmp, ng=("127.0.0.1", 2223)).started() as rtp:
        ...  # rtp.ng_address is answering NG ping
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from .errors import LabError

__all__ = ["KAMAILIO_BIN", "REDIS_BIN", "RTPENGINE_BIN", "Daemon", "Kamailio", "RedisServer",
           "Rtpengine", "free_port", "redis_main_conf",
           "free_ports", "kamailio_check", "ng_ping", "tcp_open", "udp_bound"]

RTPENGINE_BIN = "/usr/bin/rtpengine"
KAMAILIO_BIN = "/usr/sbin/kamailio"
REDIS_BIN = "/usr/bin/redis-server"


def free_port(proto: str = "udp", host: str = "127.0.0.1") -> int:
    """A port currently free on ``host`` (for tests; racy by nature, good enough on loopback)."""
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free for both UDP and TCP on ``host`` (SIP listens on both).

    All candidates stay bound until every one is chosen, so no two are the same; still racy
    against other processes once released, like :func:`free_port`."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < n:
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            held.append(u)
            u.bind((host, 0))
            port = int(u.getsockname()[1])
            t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(t)
            try:
                t.bind((host, port))
            except OSError:
                continue  # TCP side taken: keep both held (never offered again) and retry
            ports.append(port)
        return ports
    finally:
        for sock in held:
            sock.close()


def ng_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when an rtpengine answers NG ping on UDP ``host:port``."""
    from .errors import SiprecctlError
    from .ng import NgClient

    try:
        with NgClient((host, port), timeout=timeout) as ng:
            ng.ping()
    except SiprecctlError:
        return False
    return True


def tcp_open(host: str, port: int, timeout: float = 0.3) -> bool:
    """True when something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def udp_bound(host: str, port: int) -> bool:
    """True when a socket of this network namespace is bound to UDP ``host:port`` (or the
    port on any address), read from ``/proc/net/udp``: probing by binding the port would
    race the process starting on it."""
    want = {f"00000000:{port:04X}"}
    with contextlib.suppress(OSError):  # a host name: the wildcard address only
        want.add(f"{socket.inet_aton(host)[::-1].hex().upper()}:{port:04X}")
    try:
        lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return False
    return any(len(f := ln.split()) > 1 and f[1] in want for ln in lines)


class Daemon:
    """A foreground process with its output captured to ``log_path``
    (default ``<workdir>/<name>.log``); ``workdir`` is also its working directory.

    Readiness is :meth:`ready`: subclasses override it, or pass ``ready`` (a probe
    returning True once the process serves). ``env``: variables added to the inherited
    environment (what a unit's ``EnvironmentFile=`` gives the daemon).
    """

    name = "daemon"

    def __init__(self, argv: Sequence[str], workdir: Path, *, name: str | None = None,
                 log_path: Path | None = None, ready: Callable[[], bool] | None = None,
                 env: Mapping[str, str] | None = None) -> None:
        self.env = dict(env) if env else None
        if name is not None:
            self.name = name
        self.argv = list(argv)
        self.workdir = Path(workdir)
        self.log_path = Path(log_path) if log_path is not None else \
            self.workdir / f"{self.name}.log"
        self._probe = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir,
                                         stdin=subprocess.DEVNULL, start_new_session=True,
                                         env={**os.environ, **self.env} if self.env else None)
        except OSError as exc:
            raise LabError(f"cannot start {self.name}: {exc}") from exc
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def ready(self) -> bool:
        """True once the process serves (default: the ``ready`` probe, else at once)."""
        return self._probe() if self._probe is not None else True

    def wait_ready(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(f"{self.name} exited with status {self.proc.returncode} during "
                               f"start-up: {self.log_errors()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise LabError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def log_errors(self, limit: int = 5) -> str:
        """The first ERROR/CRITICAL lines of the log (the cause, not the shutdown noise)."""
        tail = self.log_tail(200).splitlines()
        errs = [ln.strip() for ln in tail if "ERROR" in ln or "CRITICAL" in ln or "FATAL" in ln]
        return "\n".join(errs[:limit]) if errs else "\n".join(tail[-10:])

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 5.0, *, kill: bool = False) -> int | None:
        """SIGTERM the process group (SIGKILL with ``kill``), SIGKILL after ``timeout``;
        returns the exit status."""
        p = self.proc
        if p is None or p.poll() is not None:
            return None if p is None else p.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            return p.wait(timeout)

    @contextlib.contextmanager
    def started(self, timeout: float = 10.0) -> Iterator[Daemon]:
        self.start()
        try:
            self.wait_ready(timeout)
            yield self
        finally:
            self.stop()

    def exit_status(self, timeout: float = 0.0) -> int | None:
        """The exit status once the process has exited (waiting up to ``timeout``), or None
        while it runs (or was never started)."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Rtpengine(Daemon):
    """rtpengine in the foreground, userspace; ``overrides`` are extra ``--key=value``."""

    name = "rtpengine"

    def __init__(self, config: Path | None, workdir: Path, *, ng: tuple[str, int],
                 overrides: Sequence[str] = (), env: Mapping[str, str] | None = None) -> None:
        self.ng_address = ng
        argv = [RTPENGINE_BIN, f"--config-file={config or 'none'}", "--foreground",
                "--log-stderr", f"--pidfile={Path(workdir) / 'rtpengine.pid'}"]
        if config is None:
            argv += ["--table=-1", f"--listen-ng={ng[0]}:{ng[1]}"]
        argv += list(overrides)
        super().__init__(argv, workdir, env=env)

    def ready(self) -> bool:
        return ng_ping(*self.ng_address, timeout=0.2)


class Kamailio(Daemon):
    """Kamailio in the foreground (``-DD -E``) with a private runtime dir (``-Y``)."""

    name = "kamailio"

    def __init__(self, config: Path, workdir: Path, *, ready_tcp: tuple[str, int] | None = None,
                 shm_mb: int = 64, pkg_mb: int = 8, defines: Sequence[str] = (),
                 run_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir) if run_dir else Path(workdir) / "run"
        self.ready_tcp = ready_tcp
        argv = [KAMAILIO_BIN, "-DD", "-E", "-f", str(config), "-Y", str(self.run_dir),
                "-P", str(self.run_dir / "kamailio.pid"), "-m", str(shm_mb), "-M", str(pkg_mb)]
        for d in defines:
            argv += ["-A", d]
        super().__init__(argv, workdir)

    def start(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        super().start()

    def ready(self) -> bool:
        if self.ready_tcp is None:
            return (self.run_dir / "kamailio_rpc.sock").exists()
        return tcp_open(*self.ready_tcp)


def redis_main_conf(data_dir: Path, rendered: Path) -> str:
    """What Debian's /etc/redis/redis.conf keeps (foreground, log to stdout, a data dir),
    then siprecctl's rendered part included at its end, as the README's operator step."""
    return f'daemonize no\nlogfile ""\ndir {data_dir}\ninclude {rendered}\n'


class RedisServer(Daemon):
    """Debian's redis-server in the foreground from siprecctl's rendered ``redis.conf``,
    included by a minimal main config (what Debian's /etc/redis/redis.conf keeps: foreground,
    log to stdout, a data dir) — the operator's ``include`` line, in a work directory."""

    name = "redis-server"

    def __init__(self, rendered: Path, workdir: Path, *, address: str, port: int,
                 password: str) -> None:
        self.address, self.port, self._password = address, port, password
        self.main_conf = Path(workdir) / "redis-main.conf"
        self._rendered = Path(rendered)
        super().__init__([REDIS_BIN, str(self.main_conf)], workdir)

    def start(self) -> None:
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self.main_conf.write_text(redis_main_conf(data, self._rendered))
        super().start()

    def ready(self) -> bool:
        # a Redis answers "-NOAUTH" (or "+PONG" when it has no password) once it serves
        try:
            with socket.create_connection((self.address, self.port), timeout=0.3) as s:
                s.sendall(b"AUTH " + self._password.encode() + b"\r\nPING\r\n")
                s.settimeout(0.3)
                got = b""
                while got.count(b"\r\n") < 2:
                    chunk = s.recv(256)
                    if not chunk:
                        break
                    got += chunk
                return b"+PONG" in got
        except OSError:
            return False


def kamailio_check(config: Path) -> subprocess.CompletedProcess[str]:
    """``kamailio -c -f config``: syntax, modules and fixups (not that sockets bind)."""
    return subprocess.run([KAMAILIO_BIN, "-c", "-f", str(config)], capture_output=True,
                          text=True, timeout=60, check=False)
