"""deploy/kubernetes/ against the Kubernetes API schema, and what the manifests promise of drl.

- Every manifest validates, strictly (no unknown field), against the schemas of Kubernetes 1.30
  and 1.37 that PyPI's kubernetes-validate ships, with no network (under `unshare -rn` where
  the kernel allows it); a manifest with a misspelt field is refused, so the check can fail.
- The pieces fit: the probes' paths are drl's, the scrape annotations name the admin port
  (`--admin-addr`, where /metrics is), the Service exposes the HTTP and gRPC ports but not the
  admin one, the Service and the PodDisruptionBudget select the pods, the ConfigMap is mounted where
  `--config` points, and the config in the ConfigMap is one `drl config validate` accepts.
- A ConfigMap update reaches a running node without a restart: `drl serve --config DIR` on a
  directory laid out as the kubelet lays out a mounted ConfigMap (files linked through a `..data`
  symlink that an update swaps) loads the new config (config version 2, the new limit answered).

Run by scripts/e2e.sh (which installs kubernetes-validate into target/e2e-venv).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from harness import (ROOT, Processes, check, drl_binary, equal, request, run, start_drl,
                     wait_until)

MANIFESTS = ROOT / "deploy" / "kubernetes"
VERSIONS = ["1.30.0", "1.37.0"]


def validator() -> list[str]:
    """kubernetes-validate of this Python, without network when `unshare` allows it."""
    argv = [str(Path(sys.executable).parent / "kubernetes-validate"), "--strict", "--quiet"]
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"],
                                                  capture_output=True).returncode == 0:
        print("  (validating with no network: unshare -rn)", flush=True)
        return ["unshare", "-rn"] + argv
    return argv


def load(name: str) -> dict:
    return yaml.safe_load((MANIFESTS / name).read_text())


def validate(procs: Processes) -> None:
    files = sorted(MANIFESTS.glob("*.yaml"))
    check(len(files) >= 4, f"{len(files)} manifests in deploy/kubernetes")
    argv = validator()
    for version in VERSIONS:
        out = subprocess.run(argv + ["-k", version] + [str(f) for f in files],
                             capture_output=True, text=True, timeout=120)
        equal((out.returncode, out.stdout + out.stderr), (0, ""),
              f"every manifest is valid for Kubernetes {version}")
    bad = procs.write("bad.yaml", (MANIFESTS / "deployment.yaml").read_text()
                      .replace("readinessProbe:", "readinesProbe:"))
    out = subprocess.run(argv + ["-k", VERSIONS[0], str(bad)], capture_output=True, text=True,
                         timeout=120)
    check(out.returncode != 0 and "readinesProbe" in out.stdout + out.stderr,
          "a Deployment with a misspelt field is refused")


def consistent(procs: Processes) -> None:
    deployment, service = load("deployment.yaml"), load("service.yaml")
    pdb, configmap = load("pdb.yaml"), load("configmap.yaml")
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    args = container["args"]

    equal(container["livenessProbe"]["httpGet"]["path"], "/healthz", "liveness probe")
    equal(container["readinessProbe"]["httpGet"]["path"], "/readyz", "readiness probe")
    annotations = pod["metadata"]["annotations"]
    equal(annotations["prometheus.io/port"], str(ports["admin"]), "scrape annotation's port")
    equal(annotations["prometheus.io/path"], "/metrics", "scrape annotation's path")
    equal(args[args.index("--http-addr") + 1], f"0.0.0.0:{ports['http']}", "HTTP port")
    equal(args[args.index("--grpc-addr") + 1], f"0.0.0.0:{ports['grpc']}", "gRPC port")
    equal(args[args.index("--admin-addr") + 1], f"0.0.0.0:{ports['admin']}", "admin port")
    # The admin port stays off the Service.
    equal(sorted(p["targetPort"] for p in service["spec"]["ports"]), ["grpc", "http"],
          "the Service's target ports")
    for name, selector in (("Deployment", deployment["spec"]["selector"]["matchLabels"]),
                           ("Service", service["spec"]["selector"]),
                           ("PodDisruptionBudget", pdb["spec"]["selector"]["matchLabels"])):
        check(selector.items() <= labels.items(), f"the {name}'s selector matches the pods")
    mount = container["volumeMounts"][0]
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == mount["name"])
    equal(volume["configMap"]["name"], configmap["metadata"]["name"], "the mounted ConfigMap")
    equal(args[args.index("--config") + 1], mount["mountPath"], "--config is the mount")
    env = {e["name"]: e for e in container["env"]}
    equal(env["DRL_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["name"], "drl-admin",
          "the admin token comes from a Secret")

    for name, text in configmap["data"].items():
        path = procs.write(name, text)
        out = subprocess.run([str(drl_binary()), "config", "validate", str(path)],
                             capture_output=True, text=True, timeout=30)
        equal(out.returncode, 0, f"drl config validate accepts the ConfigMap's {name}: "
                                 f"{out.stdout.strip()}{out.stderr.strip()}")


def kubelet_update(procs: Processes) -> None:
    """The kubelet's layout of a mounted ConfigMap, and its atomic update."""
    mount = procs.dir / "etc-drl"
    mount.mkdir()

    def publish(version: str, limit: int) -> None:
        data = mount / f"..{version}"
        data.mkdir()
        (data / "drl.yaml").write_text(
            f"store:\n  kind: memory\ndefault:\n  limit: {limit}\n  window: 1h\nrules: []\n")
        link = mount / "..data_tmp"
        link.symlink_to(data.name)
        os.replace(link, mount / "..data")  # rename(2): the swap is atomic
        if not (mount / "drl.yaml").is_symlink():
            (mount / "drl.yaml").symlink_to("..data/drl.yaml")

    publish("2026_01_01_00_00_00.1", 5)
    http, _ = start_drl(procs, mount)

    def limit_answered() -> int:
        body = json.dumps({"user_id": "k", "endpoint": "/k8s", "hits": 0}).encode()
        r = request(http, "POST", "/v1/check", {"content-type": "application/json"}, body)
        return r.json()["limit"]

    equal(limit_answered(), 5, "the mounted config is in force")
    publish("2026_01_01_00_01_00.2", 7)
    old = mount / "..2026_01_01_00_00_00.1"
    shutil.rmtree(old)  # as the kubelet removes the old version
    wait_until(lambda: limit_answered() == 7, "the swapped config in force", timeout=15)
    metrics = request(http, "GET", "/metrics").body.decode()
    check("drl_config_version 2\n" in metrics, "config version 2 after the ConfigMap update")


def test() -> None:
    with Processes("kubernetes") as procs:
        validate(procs)
        consistent(procs)
        kubelet_update(procs)


if __name__ == "__main__":
    run("Kubernetes manifests", test, deadline=180)
