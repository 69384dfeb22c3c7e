#!/usr/bin/env python3
"""Misbehaving clients and guests against a running iota server, for the soak in
scripts/bench-server.sh. Usage: chaos.py URL SECONDS FIXTURES_DIR

Expects the modules `sleeper`, `trap`, `flood` and `bomb` to be uploaded. For SECONDS, six
threads each repeat one kind of trouble: runs that sleep past the run timeout, clients that
hang up mid-run, traps, stdout floods, memory bombs, and re-uploads of the module `churn`.
Prints one JSON object: how many of each were made, by answer."""

import collections
import json
import socket
import sys
import threading
import time
import urllib.error
import urllib.request

url, seconds, fixtures = sys.argv[1], float(sys.argv[2]), sys.argv[3]
host, port = url[len("http://"):].split(":")
deadline = time.monotonic() + seconds
answers = collections.Counter()
lock = threading.Lock()


def post(path, body=b"", content_type="application/octet-stream"):
    request = urllib.request.Request(url + path, data=body, headers={"content-type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
            return response.status
    except urllib.error.HTTPError as error:
        error.read()
        return error.code
    except OSError as error:
        return type(error).__name__


def hang_up():
    with socket.create_connection((host, int(port))) as s:
        s.sendall(f"POST /run?name=sleeper HTTP/1.1\r\nhost: {host}\r\ncontent-length: 0\r\n\r\n".encode())
        time.sleep(0.3)
    return "hung up"


def reupload(state={"i": 0}):
    state["i"] += 1
    name = "fib.wasm" if state["i"] % 2 else "count_vowels.wasm"
    with open(f"{fixtures}/{name}", "rb") as f:
        return post("/upload?name=churn", f.read(), "application/wasm")


trouble = {
    "sleeper (504 expected)": lambda: post("/run?name=sleeper"),
    "hang-up": hang_up,
    "trap (500 expected)": lambda: post("/run?name=trap"),
    "flood (200, truncated)": lambda: post("/run?name=flood"),
    "memory bomb (500 expected)": lambda: post("/run?name=bomb"),
    "re-upload (201, or 503 when busy)": reupload,
}


def repeat(kind, act):
    while time.monotonic() < deadline:
        answer = act()
        with lock:
            answers[f"{kind}: {answer}"] += 1


threads = [threading.Thread(target=repeat, args=item) for item in trouble.items()]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(dict(sorted(answers.items())), indent=1))
