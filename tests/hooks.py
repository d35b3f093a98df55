"""A webhook receiver on loopback for the built-in alerts: records every POST (headers and raw
body) and checks Postern's signature (`X-Postern-Signature: t=TS,v1=HEX`, HMAC-SHA256 of
"TS.BODY")."""
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class WebhookReceiver:
    def __init__(self, secret: bytes):
        self.secret = secret
        self.posts = []  # (headers dict, raw body)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                n = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(n)
                with outer.lock:
                    outer.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *a):
        self.httpd.shutdown()
        self.httpd.server_close()

    def verified(self, headers, body):
        sig = dict(p.split("=", 1) for p in headers["x-postern-signature"].split(","))
        want = hmac.new(self.secret, sig["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(want, sig["v1"]) and abs(time.time() - int(sig["t"])) < 300

    def notices(self):
        with self.lock:
            return [(h, json.loads(b), b) for h, b in self.posts]

    def wait_for(self, alert, state="firing", timeout=30):
        deadline = time.time() + timeout
        while time.time() < deadline:
            for h, n, raw in self.notices():
                if n["alert"] == alert and n["state"] == state:
                    return h, n, raw
            time.sleep(0.2)
        raise AssertionError(f"no {state} notice for {alert}: {[n for _, n, _ in self.notices()]}")
