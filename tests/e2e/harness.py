"""What the end-to-end tests share: free loopback ports, processes that are always stopped, an
in-process upstream HTTP server, plain HTTP requests and checks that say what they checked.

Every process is started in its own process group and stopped (SIGTERM, then SIGKILL) when the
test ends, whether it passed, failed or ran out of time; a failing test prints the end of each
process's log.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]

# How long one wait (a port, a process's exit) may take before the test fails.
WAIT = 20.0


class Failed(Exception):
    """A check that did not hold."""


class TimedOut(Exception):
    """The whole test ran past its deadline."""


_checks = 0


def check(condition: bool, what: str) -> None:
    """Fails the test with `what` unless `condition` holds; prints it as passed otherwise."""
    global _checks
    if not condition:
        raise Failed(what)
    _checks += 1
    print(f"  ok  {what}", flush=True)


def equal(actual, expected, what: str) -> None:
    check(actual == expected, f"{what}: {actual!r} == {expected!r}")


def free_port() -> int:
    """A loopback port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise Failed(f"{what} within {timeout:.0f}s")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def drl_binary() -> Path:
    """The `drl` binary under test: $DRL_BIN, else cargo's debug build."""
    path = Path(os.environ.get("DRL_BIN", ROOT / "target" / "debug" / "drl"))
    if not path.is_file():
        raise Failed(f"no drl binary at {path}: run `cargo build -p drl` or set DRL_BIN")
    return path


class Response:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status = status
        self.headers = headers  # lower-case names
        self.body = body

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, headers: dict[str, str] | None = None,
            body: bytes | None = None) -> Response:
    """One HTTP/1.1 request to 127.0.0.1:`port` on a fresh connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


class Processes:
    """The processes of one test; all stopped on exit, their logs shown (and kept) if the test
    failed, removed with the rest of the test's directory if it passed."""

    def __init__(self, name: str):
        self.dir = Path(tempfile.mkdtemp(prefix=f"drl-{name}-"))
        self.running: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        if name in self.running:
            raise Failed(f"{name} is already running")
        log = self.dir / f"{name}.log"
        self.logs[name] = log
        with open(log, "ab") as out:
            out.write(f"--- {' '.join(map(str, argv))}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> int:
        """SIGTERM to the process group, SIGKILL if it has not exited after a few seconds."""
        proc = self.running.pop(name)
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                continue
        return proc.wait(timeout=5)

    def write(self, name: str, text: str) -> Path:
        path = self.dir / name
        path.write_text(text)
        return path

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, kind, error, tb) -> None:
        for name in list(self.running):
            self.stop(name)
        if error is None:
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            for name, log in self.logs.items():
                lines = log.read_text(errors="replace").splitlines()[-30:]
                print(f"\n--- last lines of {name}'s log ({log}):", file=sys.stderr)
                print("\n".join(lines), file=sys.stderr)


def start_drl(procs: Processes, config: Path, name: str = "drl",
              http_port: int | None = None, grpc_port: int | None = None) -> tuple[int, int]:
    """Starts `drl serve --config` on loopback ports; returns (http_port, grpc_port) once it
    answers /readyz and its gRPC port accepts connections."""
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    proc = procs.start(name, [str(drl_binary()), "serve", "--config", str(config),
                              "--http-addr", f"127.0.0.1:{http_port}",
                              "--grpc-addr", f"127.0.0.1:{grpc_port}"])

    def ready() -> bool:
        if proc.poll() is not None:
            raise Failed(f"{name} exited with {proc.returncode} while starting")
        try:
            return request(http_port, "GET", "/readyz").status == 200 and port_open(grpc_port)
        except OSError:
            return False

    wait_until(ready, f"{name} ready on HTTP {http_port} and gRPC {grpc_port}")
    return http_port, grpc_port


class Upstream:
    """A tiny HTTP server in a thread: answers every GET with 200, the header
    `x-upstream: e2e` (so a test can tell its answers from Envoy's own) and the path."""

    def __init__(self):
        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body go out in two writes: without this, Nagle's algorithm holds the
            # body until the client's delayed ACK (40 ms a request on Linux).
            disable_nagle_algorithm = True

            def do_GET(self):  # noqa: N802 (the stdlib's name)
                body = f"upstream saw {self.path}\n".encode()
                self.send_response(200)
                self.send_header("x-upstream", "e2e")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "Upstream":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def run(name: str, test: Callable[[], None], deadline: float) -> None:
    """Runs `test` within `deadline` seconds; exits 0 if it passed, 1 with the reason if not."""

    def out_of_time(signum, frame):
        raise TimedOut(f"{name} ran past its {deadline:.0f}s deadline")

    signal.signal(signal.SIGALRM, out_of_time)
    signal.alarm(int(deadline))
    started = time.monotonic()
    print(f"== {name}", flush=True)
    try:
        test()
    except (Failed, TimedOut, AssertionError) as e:
        print(f"\nFAILED {name}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    finally:
        signal.alarm(0)
    print(f"{name}: {_checks} checks passed in {time.monotonic() - started:.1f}s", flush=True)
