"""Load test of the editor service: latency and throughput with Serve batching on vs off.

A bounded test on 127.0.0.1: for each editor, the app is deployed twice (batching off, then on) on
one model replica; N client threads send a fixed number of /api/edit requests (photo, mask and edited
mask at the editor's resolution, PNG) after a short warm-up. Reported per run: p50 and p95 latency
(ms), requests/s, and each as a ratio to the batching-off baseline measured in the same run.
Untrained editors (random weights) cost what trained ones do.

  python benchmarks/serve.py                                  # CPU: tiny (32 px) and base (256 px)
  python benchmarks/serve.py --editors tiny --clients 16 --requests 400
  python benchmarks/serve.py --device cuda                    # GPU: the released widths at 512 px

Benchmarks are not tests: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import requests
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskgan import config as config_lib  # noqa: E402
from maskgan.models.dmn import DenseMappingNetwork, DMNConfig, dmn_base_256, dmn_official_512, dmn_tiny  # noqa: E402
from maskgan.serving.config import ServeConfig  # noqa: E402

EDITORS = {"tiny": dmn_tiny, "base256": dmn_base_256, "official512": dmn_official_512}


@dataclasses.dataclass(frozen=True)
class Result:
    editor: str
    batching: bool
    p50_ms: float
    p95_ms: float
    requests_per_s: float
    failed: int


def write_untrained(config: DMNConfig, directory: str) -> str:
    """An untrained DMN checkpoint (random init) the Editor loads like a trained one."""
    import torch

    from maskgan.training.checkpoint import write_checkpoint

    torch.manual_seed(0)
    generator = DenseMappingNetwork(config)
    meta = {"stage": "dmn", "step": 0, "epoch": 0, "manifest_sha256": None,
            "config": {"generator": config_lib.to_dict(config)}}  # fmt: skip
    write_checkpoint(directory, {"step": 0}, weights={"generator": generator.state_dict()}, meta=meta)
    return directory


def payload(resolution: int) -> dict[str, bytes]:
    """A random photo, an ellipse face mask and the mask with a grown mouth, as PNG bytes."""

    def png(array: np.ndarray) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    size = resolution
    y, x = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.uint8)
    mask[((y - size / 2) / (0.4 * size)) ** 2 + ((x - size / 2) / (0.3 * size)) ** 2 <= 1] = 1
    edited = mask.copy()
    edited[(abs(y - 0.7 * size) <= 0.05 * size) & (abs(x - size / 2) <= 0.15 * size)] = 10
    photo = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return {"image": png(photo), "mask": png(mask), "edited_mask": png(edited)}


def load(url: str, files: dict[str, bytes], clients: int, total: int) -> tuple[list[float], float, int]:
    """`total` requests from `clients` threads; (latencies in s, wall time in s, failures)."""
    latencies: list[float] = []
    failed = 0
    counter = iter(range(total))
    lock = threading.Lock()

    def client() -> None:
        nonlocal failed
        session = requests.Session()
        multipart = {name: (f"{name}.png", data, "image/png") for name, data in files.items()}
        while True:
            with lock:
                if next(counter, None) is None:
                    return
            start = time.perf_counter()
            response = session.post(f"{url}/api/edit", files=multipart, timeout=600)
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)
                failed += response.status_code != 200

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - start, failed


def wait_healthy(url: str, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
                if json.loads(response.read()).get("status") == "ok":
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not become healthy in {timeout_s} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--editors", default=None, help=f"comma list of {', '.join(EDITORS)}")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--requests", type=int, default=None, help="requests per run (default per editor)")
    parser.add_argument("--warmup", type=int, default=4, help="requests before timing (default 4)")
    parser.add_argument("--max-batch-size", type=int, default=8)
    parser.add_argument("--batch-wait-s", type=float, default=0.01)
    parser.add_argument("--num-cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray")
    parser.add_argument("--json", metavar="FILE", help="also write the results here")
    args = parser.parse_args()
    editors = (args.editors or ("official512" if args.device == "cuda" else "tiny,base256")).split(",")
    default_requests = {"tiny": 200, "base256": 24, "official512": 200}

    import ray
    import torch
    from ray import serve

    from maskgan.serving.app import APP_NAME, build

    ray.init(address="local", num_cpus=args.num_cpus, num_gpus=1 if args.device == "cuda" else 0,
             include_dashboard=False, configure_logging=False, log_to_driver=False)  # fmt: skip
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}"
    results: list[Result] = []
    print(f"torch {torch.__version__}, {args.num_cpus} CPUs for Ray, device {args.device}, {args.clients} "
          f"clients, batch <= {args.max_batch_size}, wait {args.batch_wait_s * 1e3:.0f} ms")  # fmt: skip
    try:
        with tempfile.TemporaryDirectory(prefix="bench-serve-") as scratch:
            for editor in editors:
                model_config = EDITORS[editor]()
                checkpoint = write_untrained(model_config, os.path.join(scratch, editor))
                files = payload(model_config.resolution)
                total = args.requests or default_requests[editor]
                for batching in (False, True):
                    config = ServeConfig(
                        model_uri=checkpoint, device=args.device, batching=batching,
                        max_batch_size=args.max_batch_size, batch_wait_timeout_s=args.batch_wait_s,
                        model_num_cpus=max(1, args.num_cpus - 1), ingress_num_cpus=0,
                        model_num_gpus=1 if args.device == "cuda" else 0, max_surge_percent=0,
                    )  # fmt: skip
                    serve.run(build(config), name=APP_NAME, route_prefix="/")
                    wait_healthy(url)
                    load(url, files, min(args.clients, args.warmup), args.warmup)
                    latencies, wall, failed = load(url, files, args.clients, total)
                    quantiles = statistics.quantiles(latencies, n=20)
                    result = Result(editor, batching, statistics.median(latencies) * 1e3, quantiles[18] * 1e3,
                                    len(latencies) / wall, failed)  # fmt: skip
                    results.append(result)
                    print(f"  {editor:12s} batching {'on ' if batching else 'off'}: {total} requests, "
                          f"{wall:.1f} s", flush=True)  # fmt: skip
                    serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()

    print(f"\n{'editor':12s} {'batching':8s} {'p50 ms':>8s} {'p95 ms':>8s} {'req/s':>7s} "
          f"{'p50 x':>6s} {'p95 x':>6s} {'req/s x':>7s} {'failed':>6s}")  # fmt: skip
    for result in results:
        base = next(r for r in results if r.editor == result.editor and not r.batching)
        print(f"{result.editor:12s} {'on' if result.batching else 'off':8s} {result.p50_ms:8.1f} "
              f"{result.p95_ms:8.1f} {result.requests_per_s:7.2f} {result.p50_ms / base.p50_ms:6.2f} "
              f"{result.p95_ms / base.p95_ms:6.2f} {result.requests_per_s / base.requests_per_s:7.2f} "
              f"{result.failed:6d}")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
