"""A real Envoy asking drl over TLS, and drl's certificate renewed while Envoy is connected.

Makes a throwaway CA and two server certificates with the `openssl` command, starts `drl serve`
with examples/envoy/drl/ plus `server.tls`, and Envoy with examples/envoy/envoy.yaml whose `drl`
cluster gets an UpstreamTlsContext trusting the CA (ALPN h2, SNI localhost). Checks that Envoy's
rate-limit calls go through (allowed, then 429, no ratelimit error), that a plaintext client gets
nothing from the TLS port, then replaces the certificate files: new HTTPS connections get the new
certificate while Envoy goes on over its established connection.

Run by scripts/e2e.sh; by hand: `ENVOY_BIN=/path/to/envoy python3 tests/e2e/envoy_tls_test.py`.
"""

from __future__ import annotations

import http.client
import shutil
import ssl
import subprocess
from pathlib import Path

from envoy_test import (EXAMPLE, SEARCH_LIMIT, envoy_config, ratelimit_stats, start_envoy,
                        through_envoy)
from harness import (Failed, Processes, Upstream, check, drl_binary, equal, free_port,
                     port_open, request, run, wait_until)


def openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise Failed("the openssl command is needed to make the test's certificates")
    out = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise Failed(f"openssl {' '.join(args)}: {out.stderr}")


def make_pki(d: Path) -> None:
    """ca.pem, and two certificates for localhost / 127.0.0.1 (serials 0x0a and 0x0b)."""
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=drl e2e CA",
            cwd=d)
    (d / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    for name, serial in (("one", "0x0a"), ("two", "0x0b")):
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", "/CN=localhost", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-set_serial", serial, "-days", "1", "-extfile", "san.ext",
                "-out", f"{name}.crt", cwd=d)


def install(d: Path, name: str) -> None:
    """Makes `name`'s pair the served one: key first, then certificate, each renamed over."""
    for ext in ("key", "crt"):
        shutil.copyfile(d / f"{name}.{ext}", d / f"drl.{ext}.tmp")
        (d / f"drl.{ext}.tmp").rename(d / f"drl.{ext}")


def served_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate a new TLS connection to `port` gets."""
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("localhost", port, timeout=10, context=context)
    try:
        conn.connect()
        der = conn.sock.getpeercert(binary_form=True)
    finally:
        conn.close()
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-serial"],
                         input=der, capture_output=True)
    return int(out.stdout.decode().strip().split("=")[1], 16)


def https_ready(port: int, ca: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca))
    conn = http.client.HTTPSConnection("localhost", port, timeout=5, context=context)
    try:
        conn.request("GET", "/readyz")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def tls_cluster(procs: Processes, config: Path, ca: Path) -> Path:
    """`config` with the `drl` cluster speaking TLS to drl, trusting `ca`."""
    text = config.read_text()
    anchor = "    - name: drl\n      type: STATIC\n      connect_timeout: 1s\n"
    if text.count(anchor) != 1:
        raise Failed("examples/envoy/envoy.yaml: the drl cluster is not where this test expects")
    tls = (
        "      transport_socket:\n"
        "        name: envoy.transport_sockets.tls\n"
        "        typed_config:\n"
        '          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext\n'
        "          sni: localhost\n"
        "          common_tls_context:\n"
        '            alpn_protocols: ["h2"]\n'
        "            validation_context:\n"
        f"              trusted_ca: {{filename: {ca}}}\n"
        "              match_typed_subject_alt_names:\n"
        "                - {san_type: DNS, matcher: {exact: localhost}}\n"
    )
    return procs.write("envoy-tls.yaml", text.replace(anchor, anchor + tls))


def test() -> None:
    with Processes("envoy-tls") as procs, Upstream() as upstream:
        pki = procs.dir / "pki"
        pki.mkdir()
        make_pki(pki)
        install(pki, "one")
        ca = pki / "ca.pem"
        conf = procs.dir / "drl"
        conf.mkdir()
        limits = (EXAMPLE / "drl" / "limits.yaml").read_text()
        (conf / "limits.yaml").write_text(
            limits + f"server:\n  tls:\n    cert: {pki / 'drl.crt'}\n    key: {pki / 'drl.key'}\n")

        http_port, grpc = free_port(), free_port()
        proc = procs.start("drl", [str(drl_binary()), "serve", "--config", str(conf),
                                   "--http-addr", f"127.0.0.1:{http_port}",
                                   "--grpc-addr", f"127.0.0.1:{grpc}"])

        def drl_ready() -> bool:
            if proc.poll() is not None:
                raise Failed(f"drl exited with {proc.returncode} while starting")
            return port_open(grpc) and https_ready(http_port, ca)

        wait_until(drl_ready, "drl ready over HTTPS")
        equal(served_serial(http_port, ca), 0x0a, "the first certificate is served")
        try:
            r = request(http_port, "GET", "/readyz")
            check(r.status != 200, f"plaintext HTTP on the TLS port is not answered ({r.status})")
        except (OSError, http.client.HTTPException):
            check(True, "plaintext HTTP on the TLS port is not answered")

        listener, admin = free_port(), free_port()
        ports = {10000: listener, 9901: admin, 8000: upstream.port, 8081: grpc}
        start_envoy(procs, tls_cluster(procs, envoy_config(procs, ports, failure_mode_deny=True),
                                       ca), admin)
        for n in range(SEARCH_LIMIT):
            r = through_envoy(listener, "/api/search", "alice")
            equal((r.status, r.header("x-ratelimit-remaining")),
                  (200, str(SEARCH_LIMIT - 1 - n)), f"alice /api/search #{n + 1} over TLS")
        r = through_envoy(listener, "/api/search", "alice")
        equal(r.status, 429, f"alice /api/search #{SEARCH_LIMIT + 1}: over the limit")

        install(pki, "two")
        wait_until(lambda: served_serial(http_port, ca) == 0x0b,
                   "new connections get the renewed certificate", timeout=30)
        check(True, "the renewed certificate is served without a restart")
        r = through_envoy(listener, "/api/search", "bob")
        equal(r.status, 200, "Envoy goes on after the renewal")
        r = through_envoy(listener, "/api/search", "alice")
        equal(r.status, 429, "alice is still over the limit: the same counters")
        stats = ratelimit_stats(admin)
        equal((stats.get("ok", 0), stats.get("over_limit", 0), stats.get("error", 0)),
              (SEARCH_LIMIT + 1, 2, 0), "Envoy's ratelimit counters (ok, over_limit, error)")
        equal(procs.stop("envoy"), 0, "envoy exits 0 on SIGTERM")
        equal(procs.stop("drl"), 0, "drl exits 0 on SIGTERM")


if __name__ == "__main__":
    run("envoy over TLS end-to-end", test, deadline=120)
