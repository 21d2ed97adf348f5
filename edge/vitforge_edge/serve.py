"""HTTP serving that follows the state dir's ``current`` link without failing a request.

``POST /predict`` (body: an encoded image) -> ``{"label", "scores", "version"}``; ``GET /healthz`` ->
``{"version"}``. A watcher thread notices when the agent switches ``current``, loads the new version
*beside* the old one, and only then swaps the reference: a request in flight finishes on the model it
started with, and every later one gets the new model. A version that fails to load is logged and the
old one keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from vitforge_edge.model import EdgeModel
from vitforge_edge.store import Store

log = logging.getLogger(__name__)

MAX_BODY = 32 << 20  # bytes


class ModelHolder:
    """The serving model, replaced whole (one reference assignment) when ``current`` moves."""

    def __init__(self, store: Store):
        self.store = store
        self.model: EdgeModel | None = None
        self._loaded: str | None = None
        self.refresh()

    def refresh(self) -> None:
        version = self.store.current()
        if version is None or version == self._loaded:
            return
        try:
            model = EdgeModel(self.store.versions / version, version, engine_cache=self.store.engines)
        except Exception as err:  # keep serving what we have
            log.error("cannot load v%s: %s", version, err)
            self._loaded = version
            return
        self.model, self._loaded = model, version
        log.info("serving v%s", version)

    def watch(self, stop: threading.Event, interval_s: float = 0.1) -> None:
        while not stop.wait(interval_s):
            self.refresh()


def make_server(state_dir: Path, host: str = "127.0.0.1", port: int = 8080) -> tuple[ThreadingHTTPServer, ModelHolder]:
    holder = ModelHolder(Store(state_dir))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, code: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            model = holder.model
            if self.path != "/healthz":
                return self._send(404, {"error": "GET /healthz or POST /predict"})
            self._send(200 if model else 503, {"version": model.version if model else None})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/predict":
                return self._send(404, {"error": "POST /predict with an image body"})
            n = int(self.headers.get("Content-Length") or 0)
            if not 0 < n <= MAX_BODY:
                return self._send(400, {"error": f"body must be an image of 1 to {MAX_BODY} bytes"})
            data = self.rfile.read(n)
            model = holder.model  # one reference for the whole request, even if a swap lands meanwhile
            if model is None:
                return self._send(503, {"error": "no model installed yet"})
            try:
                image = model.prepare(data)
            except Exception as err:
                return self._send(400, {"error": f"not a readable image: {err}"})
            pred = model.predict_prepared(image)
            self._send(200, {"label": pred.label, "scores": pred.scores, "version": pred.version})

        def log_message(self, fmt: str, *args) -> None:
            log.debug(fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server, holder


def serve(state_dir: Path, host: str, port: int) -> None:
    server, holder = make_server(state_dir, host, port)
    stop = threading.Event()
    threading.Thread(target=holder.watch, args=(stop,), daemon=True).start()
    log.info("serving on http://%s:%d", host, server.server_address[1])
    try:
        server.serve_forever()
    finally:
        stop.set()
        server.server_close()
