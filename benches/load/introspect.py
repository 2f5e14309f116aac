"""A tiny RFC 7662 introspection endpoint for the load benchmark (standard library only).

Every POST is answered `active: true` with the claims in the JSON file given on the command
line (scope, patient, client_id, sub, iss, aud, exp); the gateway caches the answer, so a run
normally calls it once per token. `GET /count` returns how many introspections were served.

    python3 introspect.py PORT CLAIMS.json
"""

import http.server
import json
import sys
import threading

CLAIMS = {}
COUNT = 0
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802 (http.server naming)
        global COUNT
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        with LOCK:
            COUNT += 1
        self._answer(200, dict(CLAIMS, active=True))

    def do_GET(self):  # noqa: N802
        if self.path == "/count":
            with LOCK:
                self._answer(200, {"count": COUNT})
        else:
            self._answer(404, {"error": "not found"})

    def log_message(self, *args):
        pass


def main() -> None:
    global CLAIMS
    port, claims = int(sys.argv[1]), sys.argv[2]
    with open(claims, encoding="utf-8") as f:
        CLAIMS = json.load(f)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
