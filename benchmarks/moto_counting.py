"""moto's S3 server on 127.0.0.1 that also counts the requests it answers, by kind, at the server.

    python benchmarks/moto_counting.py PORT      # what `moto_server -H 127.0.0.1 -p PORT` does, plus:
    GET  /_counts          -> {"PUT": n, "POST": n, "GET": n, "LIST": n, "HEAD": n, "DELETE": n}
    POST /_counts/reset    -> zero them

PUT is a PutObject or an UploadPart; POST a CreateMultipartUpload or CompleteMultipartUpload (S3
bills both as PUT-class requests); LIST a GET on a bucket (no key). Counting is one increment per
request under a lock, so it costs the server nothing measurable. Used by
``benchmarks/generate_throughput.py`` (b) to count what each layout sends, whoever sends it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import Counter

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import run_simple

KINDS = ("PUT", "POST", "GET", "LIST", "HEAD", "DELETE")


class Counting:
    def __init__(self, app) -> None:
        self.app, self.lock, self.counts = app, threading.Lock(), Counter()

    def __call__(self, environ, start_response):
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path.startswith("/_counts"):
            with self.lock:
                if path == "/_counts/reset":
                    self.counts.clear()
                body = json.dumps({k: self.counts.get(k, 0) for k in KINDS}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        kind = "LIST" if method == "GET" and "/" not in path.strip("/") else method
        with self.lock:
            self.counts[kind] += 1
        return self.app(environ, start_response)


def main() -> None:
    port = int(sys.argv[1])
    os.environ.setdefault("MOTO_PORT", str(port))  # as moto_server sets it
    run_simple("127.0.0.1", port, Counting(DomainDispatcherApplication(create_backend_app)), threaded=True,
               request_handler=MotoRequestHandler)


if __name__ == "__main__":
    main()
