"""The ingress answers 503 with a message when the model deployment cannot be reached.

The FastAPI app of the ingress runs under uvicorn on 127.0.0.1 with a stand-in for the model's Serve
handle whose calls fail the way a dead or missing replica does; the app itself is the real one.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests
import uvicorn

from maskgan.serving.app import create_api
from maskgan.serving.config import ServeConfig
from maskgan.serving.samples import Samples
from tests.serving.conftest import free_port
from tests.serving.test_serve_api import edit_inputs


class Unreachable:
    """Like a Serve handle whose deployment has no live replica: every call raises."""

    class _Method:
        def remote(self, *args):
            async def fail():
                raise RuntimeError("Deployment 'EditorModel' has no running replicas")

            return fail()

    run = info = _Method()


@pytest.fixture(scope="module")
def unavailable_url():
    config = ServeConfig(model_uri="models:/maskgan-editor@champion")
    api = create_api(config, Unreachable(), Samples(None, 0))
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(api, host="127.0.0.1", port=port, log_level="warning", loop="asyncio")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_healthz_is_503_naming_the_model(unavailable_url):
    response = requests.get(f"{unavailable_url}/healthz", timeout=30)
    assert response.status_code == 503
    body = response.json()
    assert body["status"] != "ok" and "models:/maskgan-editor@champion" in body["detail"]


def test_an_edit_is_503_with_a_retry_hint(unavailable_url):
    response = requests.post(f"{unavailable_url}/api/edit", files=edit_inputs(), timeout=30)
    assert response.status_code == 503
    assert "not available right now" in response.json()["detail"] and "retry" in response.json()["detail"]


def test_the_page_and_classes_do_not_need_the_model(unavailable_url):
    assert requests.get(f"{unavailable_url}/", timeout=30).status_code == 200
    assert len(requests.get(f"{unavailable_url}/api/classes", timeout=30).json()) == 19
    assert requests.get(f"{unavailable_url}/api/samples", timeout=30).json() == []
