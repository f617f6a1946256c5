"""An independent client of drl's Envoy API: Python `grpcio` with the official generated Envoy
protos (`xds-protos` on PyPI), calling
`envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit` on a running `drl serve`.

Nobody here wrote this client or its protos, so it checks the wire format as Envoy and its
ecosystem see it: overall_code, each descriptor's status (code, current_limit with
requests_per_unit and unit, limit_remaining, duration_until_reset), OVER_LIMIT after N,
hits_addend, a descriptor with no rule, an unlimited one, several descriptors all or nothing,
and INVALID_ARGUMENT for an unknown domain.

Run by scripts/e2e.sh; by hand: `python3 tests/e2e/rls_client_test.py` with grpcio and
xds-protos installed.
"""

from __future__ import annotations

import grpc
from envoy.extensions.common.ratelimit.v3 import ratelimit_pb2
from envoy.service.ratelimit.v3 import rls_pb2, rls_pb2_grpc

from harness import Processes, check, equal, run, start_drl

Code = rls_pb2.RateLimitResponse.Code
Unit = rls_pb2.RateLimitResponse.RateLimit.Unit

NATIVE = """\
default: {limit: 100, window: 1m}
rules:
  - endpoint: /api/search
    limit: 3
    window: 1m
"""

GATEWAY = """\
domain: gateway
descriptors:
  - key: api_key
    rate_limit: {unit: hour, requests_per_unit: 5}
  - key: api_key
    value: internal
    rate_limit: {unlimited: true}
  - key: tenant
    rate_limit: {unit: minute, requests_per_unit: 2}
"""


def descriptor(*entries: tuple[str, str], hits: int | None = None):
    d = ratelimit_pb2.RateLimitDescriptor(
        entries=[ratelimit_pb2.RateLimitDescriptor.Entry(key=k, value=v) for k, v in entries])
    if hits is not None:
        d.hits_addend.value = hits
    return d


def ask(stub, domain: str, *descriptors, hits_addend: int = 0):
    request = rls_pb2.RateLimitRequest(domain=domain, descriptors=descriptors,
                                       hits_addend=hits_addend)
    return stub.ShouldRateLimit(request, timeout=5)


def check_status(status, code, per_unit: int, unit, remaining: int, window_s: int, what: str):
    equal(Code.Name(status.code), Code.Name(code), f"{what}: code")
    check(status.HasField("current_limit"), f"{what}: has current_limit")
    equal((status.current_limit.requests_per_unit, Unit.Name(status.current_limit.unit)),
          (per_unit, Unit.Name(unit)), f"{what}: current_limit (requests_per_unit, unit)")
    equal(status.limit_remaining, remaining, f"{what}: limit_remaining")
    reset = status.duration_until_reset.ToTimedelta().total_seconds()
    # The sliding window counts its current bucket (1/60 of the window) in full.
    most = window_s * 61 / 60
    check(0 < reset <= most, f"{what}: duration_until_reset {reset}s in (0, {most:g}s]")


def test() -> None:
    with Processes("rls-client") as procs:
        procs.write("limits.yaml", NATIVE)
        procs.write("gateway.yaml", GATEWAY)
        _, grpc_port = start_drl(procs, procs.dir)
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            stub = rls_pb2_grpc.RateLimitServiceStub(channel)

            print("-- domain drl: (user_id, endpoint), the native rules", flush=True)
            search = descriptor(("user_id", "alice"), ("endpoint", "/api/search"))
            for n in range(3):
                r = ask(stub, "drl", search)
                equal(Code.Name(r.overall_code), "OK", f"alice /api/search #{n + 1}: overall_code")
                equal(len(r.statuses), 1, f"#{n + 1}: one status per descriptor")
                check_status(r.statuses[0], Code.OK, 3, Unit.MINUTE, 2 - n, 60, f"#{n + 1}")
            r = ask(stub, "drl", search)
            equal(Code.Name(r.overall_code), "OVER_LIMIT", "alice /api/search #4: overall_code")
            check_status(r.statuses[0], Code.OVER_LIMIT, 3, Unit.MINUTE, 0, 60, "#4")
            r = ask(stub, "drl", descriptor(("user_id", "bob"), ("endpoint", "/x")),
                    hits_addend=10)
            check_status(r.statuses[0], Code.OK, 100, Unit.MINUTE, 90, 60,
                         "bob /x with hits_addend 10, the default rule")

            print("-- domain gateway: an envoyproxy/ratelimit-format file", flush=True)
            key = descriptor(("api_key", "k1"))
            r = ask(stub, "gateway", key, hits_addend=4)
            check_status(r.statuses[0], Code.OK, 5, Unit.HOUR, 1, 3600, "api_key k1, 4 hits")
            r = ask(stub, "gateway", descriptor(("api_key", "k1"), hits=2))
            equal(Code.Name(r.overall_code), "OVER_LIMIT", "k1: 2 more hits than remain")
            check_status(r.statuses[0], Code.OVER_LIMIT, 5, Unit.HOUR, 1, 3600,
                         "k1 over: nothing counted, 1 remains")
            r = ask(stub, "gateway", descriptor(("api_key", "internal")))
            equal((Code.Name(r.overall_code), r.statuses[0].limit_remaining,
                   r.statuses[0].HasField("current_limit")), ("OK", 2**32 - 1, False),
                  "unlimited key: OK, limit_remaining 2^32-1, no current_limit")
            r = ask(stub, "gateway", descriptor(("region", "eu")))
            equal((Code.Name(r.overall_code), Code.Name(r.statuses[0].code),
                   r.statuses[0].HasField("current_limit")), ("OK", "OK", False),
                  "a descriptor no rule matches: OK, no current_limit")

            print("-- several descriptors, all or nothing", flush=True)
            tenant = descriptor(("tenant", "t1"))
            r = ask(stub, "gateway", tenant, descriptor(("api_key", "k2")))
            equal([Code.Name(s.code) for s in r.statuses], ["OK", "OK"], "t1 and k2: both OK")
            equal([s.limit_remaining for s in r.statuses], [1, 4], "t1 and k2: each counted")
            r = ask(stub, "gateway", tenant, descriptor(("api_key", "k2"), hits=5))
            equal(Code.Name(r.overall_code), "OVER_LIMIT", "k2 asks 5 with 4 left: overall")
            equal([Code.Name(s.code) for s in r.statuses], ["OK", "OVER_LIMIT"],
                  "per-descriptor codes, in request order")
            r = ask(stub, "gateway", tenant)
            equal((Code.Name(r.overall_code), r.statuses[0].limit_remaining), ("OK", 0),
                  "t1 was not counted by the denied request (1 left, now 0)")

            print("-- errors", flush=True)
            try:
                ask(stub, "no-such-domain", descriptor(("k", "v")))
                check(False, "an unknown domain is refused")
            except grpc.RpcError as e:
                equal(e.code(), grpc.StatusCode.INVALID_ARGUMENT, "unknown domain: status")
                check("no-such-domain" in e.details(), f"the message names it: {e.details()!r}")
            try:
                ask(stub, "drl", descriptor(("user_id", ""), ("endpoint", "/x")))
                check(False, "an empty user_id is refused")
            except grpc.RpcError as e:
                equal(e.code(), grpc.StatusCode.INVALID_ARGUMENT, "empty user_id: status")


if __name__ == "__main__":
    run("Envoy API from grpcio + xds-protos", test, deadline=60)
