"""Helpers for the registry tests: Debian's docker-registry, and a model made with registry.artifact."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from registry.oci import DOCKER_CONFIG, DOCKER_MANIFEST, OLLAMA_MODEL

REGISTRY_BIN = "/usr/bin/docker-registry"
USER, PASSWORD = "ffuser", "s3cret-pass"


@dataclass
class RegistryServer:
    host: str  # 127.0.0.1:PORT
    storage: Path
    log: Path
    proc: subprocess.Popen[bytes]

    def blob_data(self, digest: str) -> Path:
        hexd = digest.split(":", 1)[1]
        return self.storage / "docker/registry/v2/blobs/sha256" / hexd[:2] / hexd / "data"

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even if it crashes (no leftover registry)."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(
    root: Path, htpasswd: Path | None, tls: tuple[Path, Path] | None = None
) -> RegistryServer:
    if not os.path.exists(REGISTRY_BIN):
        pytest.skip(f"{REGISTRY_BIN} is missing: apt-get install docker-registry (.ci/setup does)")
    port = _free_port()
    storage = root / "storage"
    storage.mkdir(parents=True)
    auth = (
        f"auth:\n  htpasswd:\n    realm: ff-test\n    path: {htpasswd}\n" if htpasswd is not None else ""
    )
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: info\n  accesslog:\n    disabled: false\n"
        f"storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
        + (f"  tls:\n    certificate: {tls[0]}\n    key: {tls[1]}\n" if tls else "")
        + auth
    )
    log = root / "registry.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [REGISTRY_BIN, "serve", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    server = RegistryServer(f"127.0.0.1:{port}", storage, log, proc)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"docker-registry exited: {server.log_text()}")
        try:
            scheme = "https" if tls else "http"
            with warnings.catch_warnings():  # only asking whether it is up; the tests verify TLS
                warnings.simplefilter("ignore")
                r = requests.get(f"{scheme}://{server.host}/v2/", timeout=1, verify=False)
            if r.status_code in (200, 401):
                return server
        except requests.exceptions.ConnectionError:
            pass
        time.sleep(0.1)
    stop_registry(server)
    raise RuntimeError(f"docker-registry did not answer /v2/: {server.log_text()}")


def stop_registry(server: RegistryServer) -> None:
    server.proc.terminate()
    try:
        server.proc.wait(10)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        server.proc.wait(10)




def make_model(store: object, gguf: Path, name: str = "smollm2:1") -> str:
    """A two-variant model made with registry.artifact from the real SmolLM2 GGUF plus text layers.

    ``q4_1-cpu`` fits this machine; ``q4_1-cuda`` (same weights, its own README layer) needs a GPU, so
    ``ff pull`` without options picks ``q4_1-cpu`` on a CPU-only machine. Returns the index digest.
    """
    import json as _json

    from registry.artifact import layer, tag_model, write_index, write_variant
    from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
    from registry.oci import (
        ANN_BACKEND,
        ANN_FORMAT,
        ANN_QUANTIZATION,
        ANN_TARGET,
        ANN_VARIANT,
        FF_PARAMS,
        FF_SYSTEM,
        FF_TEMPLATE,
        MODEL_DOC,
        MODEL_WEIGHT,
    )
    from registry.store import Store

    assert isinstance(store, Store)
    weight = layer(store, MODEL_WEIGHT, "model.gguf", file=gguf)
    common = [
        layer(store, FF_TEMPLATE, "template.txt", data=b"{{ .System }}\n{{ .Prompt }}"),
        layer(store, FF_SYSTEM, "system.txt", data=b"You are brief."),
        layer(store, FF_PARAMS, "params.json", data=_json.dumps({"stop": ["<|im_end|>"]}).encode()),
        layer(store, MODEL_DOC, "LICENSE", data=b"Apache-2.0\n"),
    ]
    variants = []
    for target in ("cpu", "cuda"):
        layers = [weight, *common]
        if target == "cuda":
            layers.append(layer(store, MODEL_DOC, "README.md", data=b"# SmolLM2 for CUDA\n"))
        config = ModelPackConfig(
            descriptor=ModelDescriptor(name="smollm2"),
            config=ModelConfig(architecture="llama", format="gguf", param_size="135M", quantization="q4_1"),
            modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
        )
        ann = {
            ANN_VARIANT: f"q4_1-{target}",
            ANN_TARGET: target,
            ANN_BACKEND: "llamacpp",
            ANN_FORMAT: "gguf",
            ANN_QUANTIZATION: "q4_1",
        }
        variants.append(write_variant(store, config, layers, ann))
    index = write_index(store, variants)
    tag_model(store, name, index)
    return index.digest


def push_raw(host: str, repo: str, tag: str, blobs: list[bytes], manifest: dict[str, object],
             media_type: str = "application/vnd.oci.image.manifest.v1+json") -> str:
    """Push hand-made blobs and a manifest (hostile or foreign content) as they are; return its digest."""
    import hashlib
    import json as _json
    import tempfile

    from registry.http import RegistryClient
    from registry.oci import Descriptor
    from registry.transfer import put_manifest
    from registry.upload import upload_blob

    client = RegistryClient(host)
    with tempfile.TemporaryDirectory() as tmp:
        for i, data in enumerate(blobs):
            path = Path(tmp) / str(i)
            path.write_bytes(data)
            desc = Descriptor(
                media_type="application/octet-stream",
                digest="sha256:" + hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
            upload_blob(client, repo, path, desc)
    body = _json.dumps(manifest).encode()
    put_manifest(client, repo, tag, body, media_type)
    return "sha256:" + hashlib.sha256(body).hexdigest()


def blob_desc(data: bytes, media_type: str, filepath: str | None = None) -> dict[str, object]:
    import hashlib

    d: dict[str, object] = {
        "mediaType": media_type, "digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)
    }
    if filepath is not None:
        d["annotations"] = {"org.cncf.model.filepath": filepath, "org.opencontainers.image.title": filepath}
    return d


class ThrottledProxy:
    """A TCP proxy on 127.0.0.1 that slows the registry's answers to ``rate`` bytes/s and counts them
    (``downstream_bytes``); it counts requests too (``upstream_bytes``), slowed to ``up_rate`` if given.

    Used to make a pull slow enough to kill midway, and to count the bytes that really crossed.
    """

    def __init__(
        self, upstream: str, rate: int, cut_after: int | None = None, up_rate: int | None = None
    ) -> None:
        import threading

        self.upstream = upstream
        self.rate = rate
        self.up_rate = up_rate  # requests (uploads) slowed to this, when given
        self.upstream_bytes = 0
        self.cut_after = cut_after  # drop the first connection that carries more than this
        self.cuts = 0
        self.downstream_bytes = 0
        self._lock = threading.Lock()
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.host = f"127.0.0.1:{self._sock.getsockname()[1]}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        import threading

        while not self._stop:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            host, port = self.upstream.rsplit(":", 1)
            server = socket.create_connection((host, int(port)))
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, throttle: bool) -> None:
        chunk = 64 * 1024
        carried = 0
        try:
            while data := src.recv(chunk):
                dst.sendall(data)
                if not throttle:
                    with self._lock:
                        self.upstream_bytes += len(data)
                    if self.up_rate:
                        time.sleep(len(data) / self.up_rate)
                if throttle:
                    carried += len(data)
                    with self._lock:
                        self.downstream_bytes += len(data)
                        cut = self.cut_after is not None and carried > self.cut_after and self.cuts == 0
                        self.cuts += cut
                    if cut:
                        break
                    time.sleep(len(data) / self.rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._stop = True
        self._sock.close()


def make_tls(root: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1/localhost: (ca.pem, cert.pem, key.pem)."""
    root.mkdir(parents=True, exist_ok=True)
    ca, ca_key = root / "ca.pem", root / "ca.key"
    cert, key, csr, ext = root / "srv.pem", root / "srv.key", root / "srv.csr", root / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for cmd in (
        ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=ff-test-ca"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
         "-days", "2", "-extfile", ext],
    ):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return ca, cert, key


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def ollama_manifest(
    weights: bytes, extra: list[tuple[bytes, str]]
) -> tuple[dict[str, object], list[bytes]]:
    """An Ollama-format (Docker v2) manifest of ``weights`` plus ``extra`` layers, and its blobs."""
    layers = [(weights, OLLAMA_MODEL), *extra]
    config = json.dumps({
        # family and size deliberately wrong: the GGUF header is the source of truth when it can be read
        "model_format": "gguf", "model_family": "notllama", "model_families": ["notllama"],
        "model_type": "9B", "file_type": "Q4_1", "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [_sha256(d) for d, _ in layers]},
    }).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": blob_desc(config, DOCKER_CONFIG),
        "layers": [blob_desc(d, mt) for d, mt in layers],
    }
    return manifest, [config, *[d for d, _ in layers]]


@contextlib.contextmanager
def serve_http(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """A crafted HTTP server of our own on 127.0.0.1 (a free port) in a thread; yields ``host:port``."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def make_random_model(store: object, sizes: list[int], name: str = "weights:1", seed: int = 0) -> str:
    """A one-variant model (``f16-cpu``) of several weight layers of random bytes, made with
    registry.artifact; ``sizes`` in bytes, one layer each. Returns the index digest."""
    import random

    from registry.artifact import layer, tag_model, write_index, write_variant
    from registry.modelpack import ModelConfig, ModelDescriptor, ModelFS, ModelPackConfig
    from registry.oci import ANN_BACKEND, ANN_FORMAT, ANN_QUANTIZATION, ANN_TARGET, ANN_VARIANT, MODEL_WEIGHT
    from registry.store import Store

    assert isinstance(store, Store)
    rng = random.Random(seed)
    layers = []
    for i, size in enumerate(sizes):
        path = f"model-{i + 1:05d}-of-{len(sizes):05d}.safetensors"
        layers.append(layer(store, MODEL_WEIGHT, path, data=rng.randbytes(size)))
    config = ModelPackConfig(
        descriptor=ModelDescriptor(name=name.split(":", 1)[0]),
        config=ModelConfig(architecture="llama", format="safetensors", quantization="f16"),
        modelfs=ModelFS(diff_ids=[d.digest for d in layers]),
    )
    ann = {ANN_VARIANT: "f16-cpu", ANN_TARGET: "cpu", ANN_BACKEND: "llamacpp", ANN_FORMAT: "safetensors",
           ANN_QUANTIZATION: "f16"}
    index = write_index(store, [write_variant(store, config, layers, ann)])
    tag_model(store, name, index)
    return index.digest


class CountingProxy:
    """An HTTP proxy on 127.0.0.1 in front of a registry, as registries in the field have one.

    Like nginx by default, it reads a whole request body before forwarding the request, so a client
    killed mid-body leaves the registry untouched. It counts request-body bytes per method
    and kind (``blob`` for blob uploads, ``other``: ``body_bytes``), tracks how many blob uploads were
    in flight at once (``peak``), refuses bodies over ``max_body`` with 413 after reading them (as
    ECR caps upload requests), and reads bodies at most ``rate`` bytes a second.
    """

    def __init__(self, upstream: str, *, max_body: int | None = None, rate: int | None = None) -> None:
        import http.client

        proxy = self
        self.upstream = upstream
        self.max_body = max_body
        self.rate = rate
        self.body_bytes: dict[str, int] = {}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.active = self.peak = 0
        self._lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: object) -> None:
                return None

            def _body(self) -> bytes | None:
                n = int(self.headers.get("Content-Length") or 0)
                kind = "blob" if "/blobs/uploads/" in self.path else "other"
                buf = bytearray()
                with proxy._lock:
                    proxy.active += kind == "blob" and n > 0
                    proxy.peak = max(proxy.peak, proxy.active)
                try:
                    while len(buf) < n:
                        got = self.rfile.read(min(256 * 1024, n - len(buf)))
                        if not got:
                            return None  # the client went away mid-body: forward nothing
                        buf += got
                        with proxy._lock:
                            proxy.body_bytes[kind] = proxy.body_bytes.get(kind, 0) + len(got)
                        if proxy.rate:
                            time.sleep(len(got) / proxy.rate)
                finally:
                    with proxy._lock:
                        proxy.active -= kind == "blob" and n > 0
                return bytes(buf)

            def _handle(self) -> None:
                body = self._body()
                if body is None:
                    self.close_connection = True
                    return
                if proxy.max_body is not None and len(body) > proxy.max_body:
                    msg = b'{"errors":[{"code":"SIZE_INVALID","message":"request body too large"}]}'
                    self.send_response(413)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(msg)))
                    self.end_headers()
                    self.wfile.write(msg)
                    proxy.requests.append((self.command, self.path, 413))
                    return
                host, port = proxy.upstream.rsplit(":", 1)
                conn = http.client.HTTPConnection(host, int(port), timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection",)}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                proxy.requests.append((self.command, self.path, resp.status))
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    skip = ("connection", "transfer-encoding", "content-length", "date", "server")
                    if k.lower() not in skip:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.host = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def uploaded(self) -> int:
        """Request-body bytes of blob uploads so far (manifests not counted)."""
        with self._lock:
            return self.body_bytes.get("blob", 0)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
