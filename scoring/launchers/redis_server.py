"""A real local Redis server: Debian's own ``redis-server``, fetched without root and run as a plain child process on
loopback, for tests, benchmarks and a laptop's online service (no Docker on our machines).

Where the binary comes from, in this order (:func:`resolve_redis_server`):

1. ``$SCORING_REDIS_HOME`` when set: ``<home>/usr/bin/redis-server``, fetched into that folder the first time (a
   folder of one's own that already holds a runnable one is used as it is, and a fetch never overwrites what it did
   not put there). An explicit choice wins over everything else.
2. ``redis-server`` on ``PATH``, when it is Redis :data:`MIN_REDIS_VERSION` or newer: nothing to fetch.
3. A copy fetched earlier into ``~/.cache/scoring/redis-<Debian version>``: once fetched, a machine keeps using the
   same build even after apt's package lists move on (delete the folder to fetch the newer one).
4. Otherwise fetch one there now.

Fetching changes nothing on the system: ``apt-get download`` (which needs no root) puts the ``redis-server`` and
``redis-tools`` packages, plus those shared libraries they depend on that the machine lacks (on Debian 12:
``libjemalloc2`` and ``liblzf1``), into a temporary folder; ``dpkg-deb -x`` unpacks each into the cache folder; the
server then runs as ``<home>/usr/bin/redis-server`` with ``LD_LIBRARY_PATH`` pointing at the unpacked library folders.
Nothing is installed, no maintainer script runs, nothing is written outside the cache folder. The fetch happens under
a file lock and becomes visible only when complete (a marker file written last), so concurrent callers fetch once and
never run half a folder.

A :class:`RedisServer` binds ``127.0.0.1`` only, keeps no data on disk unless asked (``--save ''``,
``--appendonly no``), logs to a file in its data folder, and dies with the Python process that started it
(``PR_SET_PDEATHSIG``, as the Kafka broker does; the signal follows the *thread* that started it). It is stopped and
killed by its pid, never by name: other Redis servers on the machine are none of its business.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from scoring.errors import ScoringError
from scoring.launchers.process import (
    LOOPBACK,
    ManagedProcess,
    NotReadyError,
    PortClashError,
    ProcessExitedError,
    free_ports,
)
from scoring.launchers.process import tail as _tail

_LOGGER = logging.getLogger(__name__)

HOME_ENV = "SCORING_REDIS_HOME"
"""Environment variable naming the folder that holds (or will hold) the unpacked ``usr/bin/redis-server``; when set,
it wins over a ``redis-server`` on PATH and over the cache."""

PACKAGES = ("redis-server", "redis-tools")
"""The Debian packages fetched: ``redis-server`` holds only a symlink; the binary itself is in ``redis-tools``."""

MIN_REDIS_VERSION = (6, 2)
"""The oldest ``redis-server`` on PATH that is used as is: redis-py 8 speaks RESP3 (``HELLO``, Redis 6+), and the store
relies on ``UNLINK`` and multi-field ``HSET``. An older one is ignored and a Debian build fetched instead."""

STATE_NAME = "redis.json"
"""The server's state file (pid, port, command) inside its data folder (see :mod:`scoring.launchers.process`)."""

LOG_NAME = "redis.log"
"""The server's log (``--logfile``) and its stdout/stderr (start-up errors printed before the log file opens), inside
its data folder; appended to at each start."""

FETCH_TIMEOUT_S = 300.0
"""How long ``apt-get download`` may take: a few MB from deb.debian.org, about a second on a good network."""

_MARKER = ".fetched"
_MOVING = ".fetch-moving"  # present while a fetch moves its tree into place: what it finds there is its own to replace
_FORCED_OPTIONS = ("bind", "port", "daemonize", "dir", "logfile")
_FETCH_HINT = (
    "install Redis (`apt-get install redis-server`, as root) so that `redis-server` is on PATH, or run "
    "`apt-get update` (as root) if apt's package lists are missing, or set SCORING_REDIS_HOME to a folder holding "
    "usr/bin/redis-server"
)

# --- where the binary comes from ---------------------------------------------------------------------------------------


def cache_root() -> Path:
    """``~/.cache/scoring``: where fetched copies live, one ``redis-<Debian version>`` folder each.

    Deliberately not under ``$SCORING_CACHE_DIR``: tests point that at a temporary folder, and fetching Redis again in
    every test session would cost a download each time.
    """
    return Path.home() / ".cache" / "scoring"


def resolve_redis_server(*, timeout_s: float = FETCH_TIMEOUT_S) -> Path:
    """The ``redis-server`` binary to run, fetched the first time (see the module docstring for the order).

    Raises `ScoringError`, with a hint, when no binary is found and the fetch cannot be done (``apt-get`` or
    ``dpkg-deb`` missing, no network, apt's package lists empty) or yields a binary that cannot run.
    """
    override = os.environ.get(HOME_ENV)
    if override:
        home = Path(override).expanduser().resolve()
        binary = _binary(home)
        if _fetched(home):
            return binary
        if binary.exists() and not (home / _MOVING).exists() and redis_version(binary) is not None:
            return binary  # a folder of the user's own, not fetched by us: used as it is
        _fetch_locked(home, timeout_s)
        return binary
    on_path = shutil.which("redis-server")
    if on_path is not None:
        version = redis_version(Path(on_path))
        if version is not None and version >= MIN_REDIS_VERSION:
            return Path(on_path)
        _LOGGER.info("ignoring %s (Redis %s, older than %s)", on_path, version, MIN_REDIS_VERSION)
    earlier = _fetched_homes()
    if earlier:
        return _binary(earlier[-1])
    paragraphs = _show()
    debian_version = next(p["Version"] for p in paragraphs if p["Package"] == "redis-server")
    home = cache_root() / f"redis-{debian_version.split(':', 1)[-1]}"  # the epoch ("5:") has no place in a path
    if not _fetched(home):
        _fetch_locked(home, timeout_s, paragraphs)
    return _binary(home)


def redis_version(binary: Path) -> tuple[int, ...] | None:
    """The version ``binary --version`` reports (``Redis server v=7.0.15 ...``), or None when it does not run."""
    try:
        done = subprocess.run(
            [str(binary), "--version"],
            env=server_environment(binary),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"\bv=(\d+(?:\.\d+)*)", done.stdout)
    if done.returncode != 0 or match is None:
        return None
    return tuple(int(part) for part in match.group(1).split("."))


def server_environment(binary: Path) -> dict[str, str]:
    """The environment to run `binary` in: this process's, with ``LD_LIBRARY_PATH`` led by the library folders
    unpacked next to it (a fetched copy; a binary from PATH gets the environment unchanged)."""
    env = dict(os.environ)
    home = _home_of(binary)
    if home is None:
        return env
    lib_dirs = [str(home / d) for d in json.loads((home / _MARKER).read_text()).get("lib_dirs", [])]
    if lib_dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*lib_dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


def _binary(home: Path) -> Path:
    return home / "usr" / "bin" / "redis-server"


def _fetched(home: Path) -> bool:
    return (home / _MARKER).is_file() and _binary(home).exists()


def _home_of(binary: Path) -> Path | None:
    """The fetched folder `binary` lives in (``<home>/usr/bin/redis-server``), or None."""
    home = binary.parent.parent.parent
    return home if binary.parent.name == "bin" and binary.parent.parent.name == "usr" and _fetched(home) else None


def _fetched_homes() -> list[Path]:
    """Complete fetched copies under :func:`cache_root`, oldest fetch first."""
    root = cache_root()
    homes = [p for p in root.glob("redis-*") if p.is_dir() and _fetched(p)] if root.is_dir() else []
    return sorted(homes, key=lambda p: (p / _MARKER).stat().st_mtime)


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise ScoringError(
            f"cannot fetch redis-server: `{name}` is not on PATH (it comes with apt, on Debian and Ubuntu)",
            hint=_FETCH_HINT,
        )
    return path


def _run(cmd: list[str], *, cwd: Path | None = None, timeout_s: float, what: str) -> str:
    """Run `cmd`; its stdout, or a `ScoringError` with the tail of its output."""
    try:
        done = subprocess.run(
            cmd, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise ScoringError(
            f"{what} took over {timeout_s:g} s: {' '.join(cmd)}", hint="check that deb.debian.org is reachable"
        ) from e
    if done.returncode != 0:
        raise ScoringError(
            f"{what} failed (exit status {done.returncode}): {' '.join(cmd)}\n{_tail(done.stdout + done.stderr)}",
            hint=_FETCH_HINT,
        )
    return done.stdout


def _paragraphs(text: str) -> list[dict[str, str]]:
    """``apt-cache show``'s output as one dict per package paragraph (continuation lines joined)."""
    found: list[dict[str, str]] = []
    fields: dict[str, str] = {}
    last = None
    for line in [*text.splitlines(), ""]:
        if not line.strip():
            if fields:
                found.append(fields)
            fields, last = {}, None
        elif line[0] in " \t" and last is not None:
            fields[last] += " " + line.strip()
        elif ":" in line:
            last, value = line.split(":", 1)
            fields[last] = value.strip()
    return found


def _show() -> list[dict[str, str]]:
    """What apt knows of the candidate ``redis-server`` and ``redis-tools`` (version, dependencies)."""
    out = _run(
        [_tool("apt-cache"), "show", "--no-all-versions", *PACKAGES], timeout_s=60, what="apt-cache show redis-server"
    )
    paragraphs = [p for p in _paragraphs(out) if p.get("Package") in PACKAGES]
    if {p["Package"] for p in paragraphs} != set(PACKAGES) or not all(p.get("Version") for p in paragraphs):
        raise ScoringError("apt knows no candidate version of redis-server and redis-tools", hint=_FETCH_HINT)
    return paragraphs


def _missing_libraries(paragraphs: list[dict[str, str]]) -> list[str]:
    """The shared-library packages (``lib*``) the Redis packages depend on that are not installed here.

    Only libraries: ``adduser``, ``lsb-base`` and the like serve the system service, which is not used. Of
    alternatives (``libsystemd0 | libelogind0``) one installed is enough, and the first is fetched otherwise.
    """
    wanted: list[list[str]] = []
    for paragraph in paragraphs:
        for field in ("Pre-Depends", "Depends"):
            for clause in filter(None, (c.strip() for c in paragraph.get(field, "").split(","))):
                names = [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in clause.split("|")]
                if names[0].startswith("lib") and names not in wanted:
                    wanted.append(names)
    if not wanted:
        return []
    names = sorted({n for alternatives in wanted for n in alternatives})
    done = subprocess.run(
        [_tool("dpkg-query"), "-W", "-f=${Package} ${db:Status-Abbrev}\n", *names],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,  # exit status 1 when some are unknown: those are the missing ones
    )
    installed = {line.split()[0].split(":")[0] for line in done.stdout.splitlines() if line.split()[1:2] == ["ii"]}
    return [alternatives[0] for alternatives in wanted if not installed.intersection(alternatives)]


def _foreign_entries(home: Path) -> list[str]:
    """What in `home` a fetch did not put there: a fetch never replaces those (SCORING_REDIS_HOME could name any
    folder)."""
    ours = {".fetch.lock", _MARKER, _MOVING}
    return sorted(p.name for p in home.iterdir() if p.name not in ours and not p.name.startswith(".fetch-"))


def _fetch_locked(home: Path, timeout_s: float, paragraphs: list[dict[str, str]] | None = None) -> None:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / ".fetch.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if _fetched(home):  # another process fetched while this one waited
            return
        foreign = _foreign_entries(home)
        if foreign and not (home / _MOVING).exists():
            raise ScoringError(
                f"cannot fetch redis-server into {home}: it holds {', '.join(foreign[:5])}, not put there by a fetch, "
                "and no runnable usr/bin/redis-server",
                hint=f"point {HOME_ENV} at a new or empty folder (or unset it to use ~/.cache/scoring)",
            )
        _fetch(home, timeout_s, paragraphs if paragraphs is not None else _show())


def _fetch(home: Path, timeout_s: float, paragraphs: list[dict[str, str]]) -> None:
    """Download the packages into a temporary folder inside `home`, unpack them there, check that the binary runs,
    then move the tree into `home` and write the marker last."""
    started = time.monotonic()
    apt_get, dpkg_deb = _tool("apt-get"), _tool("dpkg-deb")
    pinned = [f"{p['Package']}={p['Version']}" for p in paragraphs]  # server and tools of one build
    libraries = _missing_libraries(paragraphs)
    _LOGGER.info("fetching %s into %s (once)", ", ".join(pinned + libraries), home)
    with tempfile.TemporaryDirectory(prefix=".fetch-", dir=home) as tmp:
        debs, root = Path(tmp) / "debs", Path(tmp) / "root"
        debs.mkdir()
        cmd = [apt_get, "download", "-q"]
        if os.geteuid() == 0:  # apt's unprivileged `_apt` user cannot write into this private folder
            cmd += ["-o", "APT::Sandbox::User=root"]
        _run([*cmd, *pinned, *libraries], cwd=debs, timeout_s=timeout_s, what="apt-get download")
        files = sorted(debs.glob("*.deb"))
        if len(files) != len(pinned) + len(libraries):
            raise ScoringError(
                f"apt-get download gave {[f.name for f in files]}, not {pinned + libraries}", hint=_FETCH_HINT
            )
        for deb in files:
            _run([dpkg_deb, "-x", str(deb), str(root)], timeout_s=120, what=f"dpkg-deb -x {deb.name}")
        lib_dirs = sorted(
            {str(p.parent.relative_to(root)) for top in ("usr/lib", "lib") for p in (root / top).rglob("*.so*")}
            if root.is_dir()
            else set()
        )
        binary = _binary(root)
        if not binary.exists():
            raise ScoringError(f"the fetched packages hold no usr/bin/redis-server: {[f.name for f in files]}")
        _check_runs(binary, [root / d for d in lib_dirs])
        (home / _MOVING).touch()
        for entry in root.iterdir():  # usr/, etc/, lib/: replace what an interrupted fetch may have left
            target = home / entry.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()
            os.replace(entry, target)
        marker = {
            "packages": pinned + libraries,
            "debs": [f.name for f in files],
            "lib_dirs": lib_dirs,
            "fetched_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        (home / _MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        (home / _MOVING).unlink()
    _LOGGER.info("fetched redis-server into %s in %.1f s", home, time.monotonic() - started)


def _check_runs(binary: Path, lib_dirs: list[Path]) -> None:
    """`binary --version` must run with `lib_dirs`; with ``ldd`` at hand, say which shared libraries are missing."""
    env = dict(os.environ, LD_LIBRARY_PATH=os.pathsep.join(str(d) for d in lib_dirs))
    ldd = shutil.which("ldd")
    if ldd is not None:
        done = subprocess.run([ldd, str(binary)], env=env, capture_output=True, text=True, timeout=30, check=False)
        missing = sorted({line.split()[0] for line in done.stdout.splitlines() if "not found" in line})
        if missing:
            raise ScoringError(
                f"the fetched redis-server needs shared libraries this machine lacks: {', '.join(missing)}",
                hint="install the packages that provide them (apt-get install ...), or install redis-server itself",
            )
    done = subprocess.run([str(binary), "--version"], env=env, capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise ScoringError(
            f"the fetched redis-server does not run (exit status {done.returncode}):\n{_tail(done.stdout + done.stderr)}",
            hint=_FETCH_HINT,
        )


# --- the server process --------------------------------------------------------------------------------------------------


def _command(port: int, *args: str, timeout_s: float) -> bytes | None:
    """Send one command over a raw RESP2 socket and return its reply (simple or bulk string; an error reply as the
    ``-ERR ...`` line); None when nothing answers. Stdlib only: this module needs no Redis client."""
    request = f"*{len(args)}\r\n".encode() + b"".join(b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args)
    try:
        with socket.create_connection((LOOPBACK, port), timeout=timeout_s) as sock:
            sock.sendall(request)
            data = b""
            while b"\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                data += chunk
            head, _, rest = data.partition(b"\r\n")
            if not head.startswith(b"$"):
                return head
            size = int(head[1:])
            if size < 0:
                return None
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    return None
                rest += chunk
            return rest[:size]
    except (OSError, ValueError):
        return None


class RedisServer(ManagedProcess):
    """One ``redis-server`` process on ``127.0.0.1``, with its working folder, log and state file (``redis.json``)
    in `data_dir`; a :class:`~scoring.launchers.process.ManagedProcess`.

    The port is chosen once (a free one, unless given) and kept across :meth:`stop` / :meth:`kill` and
    :meth:`start`, so clients holding :attr:`url` reconnect after a restart. By default nothing persists across a
    restart (``--save ''``, ``--appendonly no``); pass ``config={"appendonly": "yes"}`` for a server that keeps its
    data::

        with RedisServer(tmp / "redis") as server:   # started, stopped at the end
            client = redis.Redis.from_url(server.url)
            server.kill()                            # a crash
            server.start()                           # same port, empty again
    """

    name = "redis-server"
    poll_s = 0.05

    def __init__(
        self,
        data_dir: str | Path,
        port: int | None = None,
        *,
        binary: str | Path | None = None,
        config: Mapping[str, str] | None = None,
        die_with_parent: bool = True,
    ) -> None:
        """`binary` defaults to :func:`resolve_redis_server` (resolved, and fetched if need be, at the first
        :meth:`start`); `config` adds or overrides ``redis-server`` options (``{"appendonly": "yes"}``), except the
        ones this class owns: bind, port, daemonize, dir and logfile."""
        forced = sorted(set(config or {}) & set(_FORCED_OPTIONS))
        if forced:
            raise ScoringError(
                f"RedisServer sets {', '.join(forced)} itself",
                hint="pass the port as `port`, the folder as `data_dir`; the server always binds 127.0.0.1",
            )
        self.data_dir = Path(data_dir).expanduser().resolve()
        super().__init__(
            log_path=self.data_dir / LOG_NAME,
            cwd=self.data_dir,
            state_path=self.data_dir / STATE_NAME,
            die_with_parent=die_with_parent,
            auto_ports=port is None,
        )
        self.binary = Path(binary) if binary is not None else None
        self.config = dict(config or {})
        self._port = port if port is not None else free_ports(1)[0]

    # -- where it is

    @property
    def port(self) -> int:
        """The TCP port on loopback, kept across restarts."""
        return self._port

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, for redis-py's ``from_url`` and ``serve.redis.url``."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def ping(self, timeout_s: float = 1.0) -> bool:
        """True when the server on :attr:`port` answers ``PING`` with ``PONG``."""
        return _command(self.port, "PING", timeout_s=timeout_s) == b"+PONG"

    def __repr__(self) -> str:
        return f"RedisServer({self.url}, pid={self.pid}, data_dir={str(self.data_dir)!r})"

    # -- the managed process

    def ports(self) -> dict[str, int]:
        return {"port": self.port}

    def describe(self) -> str:
        return f"redis-server {self.url} ({self.binary}, folder {self.data_dir})"

    def pick_ports(self) -> None:
        self._port = free_ports(1)[0]

    def prepare(self) -> None:
        if self.binary is None:
            self.binary = resolve_redis_server()

    def environment(self) -> dict[str, str]:
        assert self.binary is not None
        return server_environment(self.binary)

    def command(self) -> list[str]:
        assert self.binary is not None
        return self.command_line(self.binary)

    def command_line(self, binary: Path) -> list[str]:
        """The ``redis-server`` command line: options as arguments, no config file."""
        options = {
            "bind": LOOPBACK,
            "port": str(self.port),
            "protected-mode": "yes",
            "daemonize": "no",  # a child of ours: its pid is the server's, and PDEATHSIG reaches it
            "supervised": "no",
            "dir": str(self.data_dir),
            "logfile": str(self.log_path),
            "save": "",  # no RDB snapshots: a test server is empty at each start, unless asked otherwise
            "appendonly": "no",
            **self.config,
        }
        return [str(binary), *[item for name, value in options.items() for item in (f"--{name}", value)]]

    def is_ready(self) -> bool:
        """Ready is: the server on the port says it is our process (``INFO server``'s ``process_id``: another server
        on a clashing port must not pass for ours), and it answers ``PONG``."""
        info = _command(self.port, "INFO", "server", timeout_s=1.0) or b""
        match = re.search(rb"^process_id:(\d+)", info, re.MULTILINE)
        return match is not None and self._proc is not None and int(match.group(1)) == self._proc.pid and self.ping()

    def failure(self, what: str, log_text: str, *, timed_out: bool, clash: bool) -> ScoringError:
        detail = f"{self.describe()} {what}. From its log {self.log_path}:\n{_tail(log_text)}"
        if clash:
            return PortClashError(detail, hint="pass a free port, or leave it unset to pick a free one")
        if timed_out:
            return NotReadyError(detail, hint="raise timeout_s on a slow machine, or read the log")
        return ProcessExitedError(detail, hint="read the log above; an option passed in `config` may be wrong")

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        """Start the server (fetching ``redis-server`` the first time) and return once it answers ``PING``. A no-op
        while it runs.

        Raises `BackendUnavailableError` when it does not answer within `timeout_s` or cannot bind its port (an auto
        chosen port that turns out taken on the first start is replaced once), and `ScoringError` when the process
        exits; each with the tail of its log. A server that failed to start is killed.
        """
        super().start(timeout_s)
        return self

    def restart(self, timeout_s: float = 30.0) -> RedisServer:
        """:meth:`stop` then :meth:`start`, on the same port and folder."""
        self.stop()
        return self.start(timeout_s)

    def __enter__(self) -> RedisServer:
        return self.start()
