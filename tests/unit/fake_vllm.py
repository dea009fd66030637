"""Stands in for vLLM's OpenAI server in serving tests: /health, /metrics, and /v1/models behind the API key.

Run as ``python fake_vllm.py --port P --model DIR vllm.entrypoints.openai.api_server`` (the module name on the
command line is how strop recognises its server). ``FAKE_VLLM_DELAY`` seconds pass before it listens;
``FAKE_VLLM_FAIL=1`` makes it exit at once, as vLLM does on a model it cannot load.
"""

import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    args = sys.argv[1:]
    port, model = int(args[args.index("--port") + 1]), args[args.index("--model") + 1]
    if os.environ.get("FAKE_VLLM_FAIL") == "1":
        sys.exit(3)
    time.sleep(float(os.environ.get("FAKE_VLLM_DELAY", "0")))
    key = os.environ.get("VLLM_API_KEY", "")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/health":
                return self._send(200, b"", "text/plain")
            if self.path == "/metrics":
                return self._send(200, b"vllm:num_requests_running{engine=\"0\"} 0.0\n", "text/plain")
            if self.path == "/v1/models":
                if key and self.headers.get("Authorization") != f"Bearer {key}":
                    return self._send(401, b'{"error": "Unauthorized"}', "application/json")
                body = {"data": [{"id": "SmolLM2-135M-Instruct", "root": model}]}
                return self._send(200, json.dumps(body).encode(), "application/json")
            return self._send(404, b"", "text/plain")

        def _send(self, status: int, body: bytes, kind: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()


if __name__ == "__main__":
    main()
