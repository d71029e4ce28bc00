"""Serve the web editor locally: Ray Serve on this machine, the page at http://HOST:PORT/.

Examples:
  # the registry's champion (MLflow on a tracking server), page at http://127.0.0.1:8000/
  python pipelines/serve_editor.py --model models:/maskgan-editor@champion \\
      --mlflow-uri http://mlflow.internal:5000
  # a training checkpoint (a folder of them: the latest), a face parser and a dataset's val samples
  python pipelines/serve_editor.py --model checkpoints/ebst --parser checkpoints/parser/step_00001000 \\
      --dataset runs/quickstart/parquet --port 8080
  # the authors' released generator on a GPU, two replicas, batches of up to 4
  python pipelines/serve_editor.py --model checkpoints/label2face_512p/latest_net_G.pth --device cuda \\
      --set num_replicas=2 --set model_num_gpus=1 --set max_batch_size=4
It blocks until Ctrl-C (or SIGTERM), then shuts Serve down. On a cluster use `serve run` / `serve deploy`
with infra/serve_editor.yaml instead (README: "The web editor").
Exit status: 0 stopped by Ctrl-C / SIGTERM; 1 the app failed to start (e.g. the model did not load);
2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import urllib.request

from maskgan import config as config_lib
from maskgan.serving.config import DEFAULT_MODEL_URI, ServeConfig


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "--model", default=DEFAULT_MODEL_URI, metavar="URI",
        help=f"models:/..., runs:/..., a checkpoint (folder, s3://) or a released .pth "
        f"(default {DEFAULT_MODEL_URI})",
    )  # fmt: skip
    parser.add_argument(
        "--mlflow-uri", metavar="URI", help="MLflow tracking / registry URI for models:/ runs:/"
    )
    parser.add_argument(
        "--parser", metavar="URI", help="face parser checkpoint (when the model bundles none)"
    )
    parser.add_argument(
        "--dataset", metavar="URI", help="preprocessed dataset: its val split feeds the samples"
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="HTTP host (default 127.0.0.1; 0.0.0.0: all interfaces)"
    )
    parser.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default auto")
    parser.add_argument("--no-batching", action="store_true", help="run requests one at a time")
    parser.add_argument("--config", metavar="FILE", help="YAML of ServeConfig fields (applied before --set)")
    parser.add_argument(
        "--set", action="append", default=[], metavar="FIELD=VALUE",
        help="any ServeConfig field (maskgan/serving/config.py), e.g. --set max_upload_bytes=5000000",
    )  # fmt: skip
    parser.add_argument(
        "--ray-address", metavar="ADDRESS",
        help="Ray to run on (default: RAY_ADDRESS, else a new local Ray; 'local' forces a new one)",
    )  # fmt: skip
    parser.add_argument("--num-cpus", type=int, help="CPUs of a new local Ray (default: all)")
    return parser


def resolve_config(args: argparse.Namespace) -> ServeConfig:
    """The ServeConfig of the command line: named flags <- --config YAML <- --set."""
    values = {
        "model_uri": args.model, "tracking_uri": args.mlflow_uri, "parser_uri": args.parser,
        "dataset_uri": args.dataset, "device": args.device, "batching": not args.no_batching,
    }  # fmt: skip
    return config_lib.load(
        ServeConfig, config_lib.from_dict(ServeConfig, values, "serve"), args.config, args.set
    )


def main(config: ServeConfig, *, host: str = "127.0.0.1", port: int = 8000, ray_address: str | None = None,
         num_cpus: int | None = None, stop: threading.Event | None = None) -> int:  # fmt: skip
    """Deploy the app and block until stop is set (Ctrl-C / SIGTERM sets it); Serve is shut down after."""
    import ray
    from ray import serve

    from maskgan.serving.app import APP_NAME, build

    stop = stop or threading.Event()
    ray.init(address=ray_address, num_cpus=num_cpus, include_dashboard=False, configure_logging=False)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(build(config), name=APP_NAME, route_prefix="/")
        url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        with urllib.request.urlopen(f"{url}/healthz", timeout=60) as response:
            health = json.loads(response.read())
        print(f"serving {health['model']} ({health['resolution']} px on {health['device']}) at {url}/ "
              "- Ctrl-C to stop", flush=True)  # fmt: skip
        while not stop.wait(0.5):
            pass
        print("stopping", flush=True)
        return 0
    finally:
        serve.shutdown()
        ray.shutdown()


def cli(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = resolve_config(args)
    except ValueError as error:
        print(f"serve_editor: {error}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        return main(config, host=args.host, port=args.port, ray_address=args.ray_address,
                    num_cpus=args.num_cpus, stop=stop)  # fmt: skip
    except Exception as error:  # the app did not start: say why in one line, the traceback is in the log
        if stop.is_set():
            return 0
        logging.getLogger("serve_editor").exception("the editor app failed to start")
        print(f"serve_editor: the app failed to start: {type(error).__name__}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(cli())
