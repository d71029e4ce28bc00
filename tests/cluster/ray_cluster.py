"""A real multi-raylet Ray cluster on 127.0.0.1, started with `ray start` and stopped without `ray stop`.

`ray stop` kills every Ray process on the host (the suite's own `ray_session`, other people's tests).
This cluster has its own short --temp-dir (the address file `ray_current_cluster` goes there too, so a
plain `ray.init()` elsewhere never connects to it) and explicit ports for everything that would
otherwise take a fixed default (dashboard 8265, agent 52365, client server 10001, worker ports
10002-19999). Stopping it kills only processes whose command line names its temp dir, their
descendants (Ray workers, job drivers), and nothing else; a node is stopped by killing its raylet
(found by its node-manager port) and the raylet's descendants, as a lost machine would be.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- /proc process table


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _parent(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # "pid (comm) state ppid ...": comm may hold spaces or parentheses, so split after the last ")".
    return int(stat.rsplit(")", 1)[1].split()[1])


def _pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(roots: set[int]) -> set[int]:
    """roots and every process below them (one pass over /proc, parents before children)."""
    children: dict[int, list[int]] = {}
    for pid in _pids():
        parent = _parent(pid)
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found:
            found.add(pid)
            todo.extend(children.get(pid, ()))
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def kill_all(pids: set[int], *, grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL what is still there after grace_s (grace_s 0: SIGKILL at once)."""
    first = signal.SIGTERM if grace_s > 0 else signal.SIGKILL
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, first)
    deadline = time.monotonic() + grace_s
    while grace_s > 0 and time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


# ----------------------------------------------------------------------------------------- cluster


@dataclass
class Node:
    name: str
    node_manager_port: int
    head: bool


class LocalRayCluster:
    """Head + worker raylets on 127.0.0.1 sharing one temp dir; see the module docstring."""

    def __init__(self, *, env: dict[str, str] | None = None):
        # Short: Ray's unix sockets live under the temp dir and a socket path has a 107-byte limit.
        self.temp_dir = tempfile.mkdtemp(prefix="rc", dir="/tmp")
        self.gcs_port = free_port()
        self.dashboard_port = free_port()
        self.nodes: list[Node] = []
        self._started = 0
        base = {
            k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR")
        }
        # The raylets' environment is every worker's and every job driver's: the venv's python first on
        # PATH (a job's `python` must be it), the repo under test importable, no usage stats, no auth.
        self.env = {
            **base,
            "PATH": f"{VENV_BIN}{os.pathsep}{base.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "RAY_AUTH_MODE": "disabled",
            "RAY_USAGE_STATS_ENABLED": "0",
            "PYTHONUNBUFFERED": "1",
            # Ray's own helpers that call ray.init()/the state API without an address (Ray Train's
            # PlacementGroupCleaner) would otherwise look in /tmp/ray, not this cluster's temp dir.
            "RAY_ADDRESS": f"127.0.0.1:{self.gcs_port}",
            **(env or {}),
        }

    @property
    def address(self) -> str:
        """The GCS address a driver passes to ray.init(address=...)."""
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        """The address of `ray job submit --address` and of the state API."""
        return f"http://127.0.0.1:{self.dashboard_port}"

    def ray(
        self, *args: str, check: bool = True, timeout: float = 180, **kwargs
    ) -> subprocess.CompletedProcess:
        """Run the venv's `ray` CLI with the cluster's environment."""
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args], env=kwargs.pop("env", self.env), capture_output=True,
            text=True, timeout=timeout, check=check, **kwargs,
        )  # fmt: skip

    def _node_args(self, name: str) -> list[str]:
        node_manager_port = free_port()
        return [
            "--node-ip-address", "127.0.0.1",
            "--node-name", name,  # how the tests tell the raylets apart (they share the IP)
            "--temp-dir", self.temp_dir,
            "--node-manager-port", str(node_manager_port),
            "--object-manager-port", str(free_port()),
            "--runtime-env-agent-port", str(free_port()),
            "--dashboard-agent-listen-port", str(free_port()),
            "--dashboard-agent-grpc-port", str(free_port()),
            "--metrics-export-port", str(free_port()),
            # 0/0: workers bind random free ports instead of the shared default range 10002-19999.
            "--min-worker-port", "0", "--max-worker-port", "0",
            "--disable-usage-stats",
        ]  # fmt: skip

    def _name(self, kind: str) -> str:
        self._started += 1
        return f"{kind}-{self._started}"

    def _ray_start(self, *args: str) -> None:
        """`ray start`; once more after a failure (on a loaded machine its GCS or raylet can miss
        ray's own start-up deadlines), stopping what the failed try left of this node first."""
        for attempt in (1, 2):
            before = self.own_pids()
            try:
                completed = self.ray("start", *args, check=False, timeout=300)
            except subprocess.TimeoutExpired as error:
                completed = subprocess.CompletedProcess(error.cmd, -1, str(error.stdout), str(error.stderr))
            if completed.returncode == 0:
                return
            kill_all(self.own_pids() - before, grace_s=2)
            if attempt == 2:
                raise RuntimeError(
                    f"ray start failed ({completed.returncode}): {completed.stdout[-2000:]}"
                    f"{completed.stderr[-3000:]}"
                )

    def start_head(self, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        name = self._name("head")
        ports = self._node_args(name)
        self._ray_start(
            "--head", "--port", str(self.gcs_port), "--num-cpus", str(num_cpus),
            "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
            "--ray-client-server-port", str(free_port()), "--include-dashboard", "true",
            "--resources", json.dumps(resources or {}), *ports,
        )  # fmt: skip
        node = Node(name, int(ports[ports.index("--node-manager-port") + 1]), head=True)
        self.nodes.append(node)
        self._wait_for_dashboard()
        self.node_id(node)
        return node

    def add_node(self, num_cpus: int, resources: dict[str, float] | None = None) -> Node:
        """One more raylet on 127.0.0.1 joining the head (its own name, node id, ports and resources)."""
        name = self._name("worker")
        ports = self._node_args(name)
        self._ray_start(
            "--address", self.address, "--num-cpus", str(num_cpus),
            "--resources", json.dumps(resources or {}), *ports,
        )  # fmt: skip
        node = Node(name, int(ports[ports.index("--node-manager-port") + 1]), head=False)
        self.nodes.append(node)
        self.node_id(node)
        return node

    def raylet_pid(self, node: Node) -> int | None:
        for pid in _pids():
            line = _cmdline(pid)
            if (
                "raylet" in line.split(" ", 1)[0]
                and self.temp_dir in line
                and (f"--node_manager_port={node.node_manager_port}" in line)
            ):
                return pid
        return None

    def kill_node(self, node: Node) -> None:
        """SIGKILL a node's raylet and everything below it (its workers and agents): a lost machine."""
        pid = self.raylet_pid(node)
        if pid is None:
            raise RuntimeError(f"no raylet of node {node.name} (port {node.node_manager_port})")
        kill_all(descendants({pid}), grace_s=0)
        self.nodes.remove(node)

    def own_pids(self) -> set[int]:
        """Every live process of this cluster: those naming its temp dir and their descendants."""
        roots = {pid for pid in _pids() if pid != os.getpid() and self.temp_dir in _cmdline(pid)}
        return {pid for pid in descendants(roots) if _alive(pid)}

    def shutdown(self) -> None:
        """Stop this cluster's processes only (never `ray stop`), then remove its temp dir."""
        for _ in range(3):  # a dying raylet may still spawn a worker: look again
            pids = self.own_pids()
            if not pids:
                break
            kill_all(pids, grace_s=5)
        left = self.own_pids()
        if left:
            raise RuntimeError(f"Ray processes of {self.temp_dir} still alive: {sorted(left)}")
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    # ------------------------------------------------------------------------------------ state

    def state(self, path: str) -> list[dict]:
        """GET the dashboard's state API (e.g. "nodes", "actors?detail=true&limit=1000")."""
        with urllib.request.urlopen(f"{self.dashboard_url}/api/v0/{path}", timeout=30) as response:
            body = json.load(response)
        return body["data"]["result"]["result"]

    def alive_nodes(self) -> list[dict]:
        try:
            return [n for n in self.state("nodes?limit=100") if n["state"] == "ALIVE"]
        except OSError:
            return []

    def node_id(self, node: Node, timeout: float = 90) -> str:
        """The Ray node id of a started node (waits until the GCS lists it alive)."""
        deadline = time.monotonic() + timeout
        while True:
            ids = [n["node_id"] for n in self.alive_nodes() if n["node_name"] == node.name]
            if ids:
                return ids[0]
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {node.name} did not join the cluster within {timeout} s")
            time.sleep(0.5)

    def actors(self, class_name: str) -> list[dict]:
        """Every actor of that class the GCS knows, dead ones included (node_id, pid, state, ...)."""
        return self.state(
            "actors?detail=true&limit=10000&filter_keys=class_name&filter_predicates=%3D"
            f"&filter_values={class_name}"
        )

    def _wait_for_dashboard(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.dashboard_url}/api/version", timeout=5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
