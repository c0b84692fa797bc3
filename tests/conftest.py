"""Shared fixtures: a local Ray instance, a tiny random model with the bundled tokenizer, small corpora."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
FIXTURES = Path(__file__).parent / "fixtures"
DEMO = Path(__file__).resolve().parent.parent / "ray_entigraph" / "demo" / "quality_demo.jsonl"


@pytest.fixture(scope="session")
def bundled_model_dir() -> str:
    from ray_entigraph.engines.bundled import BUNDLED_NAME, resolve_model_path

    return resolve_model_path(BUNDLED_NAME)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, bundled_model_dir) -> str:
    """A randomly initialised 2-layer Llama with the bundled tokenizer: real transformers, fast on CPU."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-model")
    tok = AutoTokenizer.from_pretrained(bundled_model_dir)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=4096, bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def ray_local(s3_endpoint):
    """A local Ray instance; started after the S3 endpoint so that its workers inherit the AWS variables."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture()
def demo_docs() -> list[dict]:
    return [json.loads(line) for line in DEMO.read_text().splitlines() if line.strip()]


@pytest.fixture()
def small_corpus(tmp_path, demo_docs) -> Path:
    """Two demo documents as JSON Lines."""
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"title": d["title"], "text": d["article"]}) for d in demo_docs[:2]) + "\n")
    return path


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    """A real S3-compatible HTTP endpoint on loopback (moto in server mode), started and stopped by tests."""

    def __init__(self, port: int | None = None):
        self.port = port or _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self) -> "MotoServer":
        import shutil
        import subprocess
        import sys
        import time
        import urllib.request

        exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
        self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url, timeout=1)
                return self
            except Exception:  # noqa: BLE001 - not up yet
                time.sleep(0.2)
        raise RuntimeError("moto_server did not start within 30 s")

    def stop(self) -> None:
        if self.proc:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None


@pytest.fixture(scope="session")
def s3_endpoint():
    """moto on 127.0.0.1, configured through the standard AWS variables (inherited by Ray workers)."""
    server = MotoServer().start()
    os.environ.update({
        "AWS_ENDPOINT_URL": server.url, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    yield server
    server.stop()


@pytest.fixture()
def s3_bucket(s3_endpoint) -> str:
    import uuid

    import fsspec

    name = f"test-{uuid.uuid4().hex[:8]}"
    fsspec.filesystem("s3").mkdir(name)
    return f"s3://{name}"


class PausableProxy:
    """A TCP proxy on loopback in front of a server; `pause()` drops every connection and refuses new ones
    (the endpoint is gone), `blackhole()` accepts connections and never answers on any of them (the endpoint
    hangs), `resume()` serves again on the same port. For storage fault injection."""

    def __init__(self, target_port: int):
        import threading

        self.target_port = target_port
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._lock = threading.Lock()
        self._conns: list = []
        self._listener = None
        self._blackholed = False
        self.resume()

    def blackhole(self) -> None:
        """From now on nothing is forwarded either way, on open connections and new ones, and nothing closes."""
        self._blackholed = True

    def resume(self) -> None:
        import socket
        import threading

        self._blackholed = False
        if self._listener is not None:
            return

        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def pause(self) -> None:
        import socket

        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener:
            listener.close()
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    stop = pause

    def _accept(self, listener) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            if self._blackholed:
                with self._lock:
                    self._conns.append(client)  # held open, never read nor answered
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst) -> None:
        swallowing = False  # once blackholed, a connection never forwards again (no late request after resume)
        try:
            while data := src.recv(65536):
                swallowing = swallowing or self._blackholed
                if not swallowing:
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src,) if swallowing else (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
