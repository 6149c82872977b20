"""The deployment files in deploy/: Kubernetes manifests against the Kubernetes JSON schemas
(offline, from the kubernetes-validate package, strict: unknown fields fail), the systemd unit with
`systemd-analyze verify` where systemd is installed, and the settings they give the SMP."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from smp.config import ENVIRONMENT, ServeConfig, parse_size

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MANIFESTS = sorted((DEPLOY / "kubernetes").glob("*.yaml"))
# Oldest version with native sidecars on by default (SidecarContainers beta), and the newest
# whose schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.29", "latest"]
SMP_VARS = set(ENVIRONMENT.values())


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = doc["spec"]
    return spec if doc["kind"] == "Pod" else spec["template"]["spec"]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def smp_container(spec: dict[str, Any]) -> dict[str, Any] | None:
    for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
        if c.get("args") == ["serve"]:
            return c
    return None


def test_every_deploy_file_opens_with_a_comment_saying_what_to_adapt() -> None:
    files = [p for p in DEPLOY.rglob("*") if p.is_file()]
    assert len(files) >= 8
    for path in files:
        lines = path.read_text().splitlines()
        if lines[0].startswith("#!"):
            lines = lines[1:]
        assert lines[0].startswith("#"), f"{path} does not open with a comment"
        header = "\n".join(line for line in lines[:40] if line.startswith("#"))
        assert "Adapt" in header, f"{path}: its opening comment does not say what to adapt"


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_validate_against_kubernetes_schemas(path: Path, version: str) -> None:
    kv = pytest.importorskip("kubernetes_validate")
    target = kv.latest_version() if version == "latest" else version
    for doc in docs(path):
        kv.validate(doc, target, strict=True)  # raises kubernetes_validate.ValidationError


def test_the_validator_rejects_a_broken_manifest() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    job = next(d for d in docs(DEPLOY / "kubernetes" / "sidecar-job.yaml") if d["kind"] == "Job")
    bad = copy.deepcopy(job)
    pod_spec(bad)["initContainers"][0]["restartPolicy"] = ["Always"]
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.29", strict=True)
    bad = copy.deepcopy(job)
    pod_spec(bad)["containers"][0]["volumeMount"] = []  # a typo: strict schemas refuse it
    with pytest.raises(kv.ValidationError):
        kv.validate(bad, "1.29", strict=True)


def test_sidecar_pod_shares_memory_volume_and_probes_grpc_health() -> None:
    job = next(d for d in docs(DEPLOY / "kubernetes" / "sidecar-job.yaml") if d["kind"] == "Job")
    spec = pod_spec(job)
    assert spec["restartPolicy"] == "OnFailure"  # trainer restarts in place, sidecar stays
    assert spec["terminationGracePeriodSeconds"] >= 30
    smp = spec["initContainers"][0]
    assert smp["restartPolicy"] == "Always" and smp_container(spec) is smp  # native sidecar
    trainer = spec["containers"][0]
    volumes = {v["name"]: v for v in spec["volumes"]}
    smp_env, trainer_env = env_of(smp), env_of(trainer)
    # one memory-backed volume, mounted at the same path in both, holding socket and store
    mount = {m["name"]: m["mountPath"] for m in smp["volumeMounts"]}
    assert all(
        m["mountPath"] == mount[m["name"]] for m in trainer["volumeMounts"] if m["name"] in mount
    )
    (name, path) = next(iter(mount.items()))
    assert volumes[name]["emptyDir"]["medium"] == "Memory"
    assert smp_env["SMP_SOCKET"].startswith(path + "/")
    assert smp_env["SMP_STORE_DIR"].startswith(path + "/")
    assert trainer_env["ECSNAP_SOCKET"] == smp_env["SMP_SOCKET"] and trainer_env["ECSNAP_JOB"]
    # memory: the volume holds the limit, the SMP's request and limit cover it
    limit = parse_size(smp_env["SMP_MEMORY_LIMIT"])
    assert parse_size(volumes[name]["emptyDir"]["sizeLimit"]) >= limit
    assert parse_size(smp["resources"]["requests"]["memory"]) > limit
    assert smp["resources"]["limits"]["memory"] == smp["resources"]["requests"]["memory"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert smp[probe]["grpc"]["port"] == int(smp_env["SMP_PORT"])
    assert spec["securityContext"]["runAsUser"]  # same uid for both: arenas are owner-only


def test_daemonset_and_trainer_pod_mount_the_same_host_paths() -> None:
    ds, pod = docs(DEPLOY / "kubernetes" / "daemonset.yaml")
    assert (ds["kind"], pod["kind"]) == ("DaemonSet", "Pod")
    ds_spec, pod_spec_ = pod_spec(ds), pod_spec(pod)
    smp = smp_container(ds_spec)
    assert smp is not None
    host = {v["name"]: v["hostPath"]["path"] for v in ds_spec["volumes"] if "hostPath" in v}
    smp_mounts = {m["mountPath"]: host[m["name"]] for m in smp["volumeMounts"] if m["name"] in host}
    pod_host = {v["name"]: v["hostPath"]["path"] for v in pod_spec_["volumes"]}
    trainer = pod_spec_["containers"][0]
    pod_mounts = {m["mountPath"]: pod_host[m["name"]] for m in trainer["volumeMounts"]}
    assert pod_mounts == smp_mounts
    env = env_of(smp)
    assert Path(env["SMP_SOCKET"]).parent.as_posix() in smp_mounts
    assert env["SMP_STORE_DIR"] in smp_mounts
    assert env_of(trainer)["ECSNAP_SOCKET"] == env["SMP_SOCKET"]
    assert pod_spec_["securityContext"]["runAsUser"] == ds_spec["securityContext"]["runAsUser"]
    assert parse_size(smp["resources"]["requests"]["memory"]) > parse_size(env["SMP_MEMORY_LIMIT"])
    assert smp["livenessProbe"]["grpc"]["port"] == int(env["SMP_PORT"])
    # Shared by many jobs: keys are required, and the admin token is out of the trainers' reach.
    assert env["SMP_REQUIRE_JOB_KEY"] == "1"
    assert not any(env["SMP_ADMIN_TOKEN_FILE"].startswith(m) for m in pod_mounts)
    keys = [e for e in trainer["env"] if e["name"] == "ECSNAP_JOB_KEY"]
    assert keys and "secretKeyRef" in keys[0]["valueFrom"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_smp_settings_are_a_valid_config(path: Path) -> None:
    for doc in docs(path):
        smp = smp_container(pod_spec(doc)) if doc["kind"] != "Service" else None
        if smp is None:
            continue
        env = env_of(smp)
        assert set(v for v in env if v.startswith("SMP_")) <= SMP_VARS
        cfg = ServeConfig.from_sources({}, env)
        assert cfg.metrics_port is not None and cfg.host == "0.0.0.0"


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}


def test_systemd_env_file_and_example_configs_are_valid_settings() -> None:
    env = read_env_file(DEPLOY / "systemd" / "smp.env")
    assert set(env) <= SMP_VARS
    cfg = ServeConfig.from_sources({}, env)
    assert cfg.memory_limit and cfg.metrics_port
    toml = ServeConfig.from_sources({"config": str(DEPLOY / "config" / "smp.toml")}, {})
    yml = ServeConfig.from_sources({"config": str(DEPLOY / "config" / "smp.yaml")}, {})
    assert toml == yml


def test_systemd_unit_keys_and_verify(tmp_path: Path) -> None:
    unit = (DEPLOY / "systemd" / "ecsnap-smp@.service").read_text()
    keys = dict(line.split("=", 1) for line in unit.splitlines() if re.match(r"^[A-Z]\w*=", line))
    assert keys["Restart"] == "on-failure" and keys["EnvironmentFile"]
    assert keys["MemoryMax"] and keys["NoNewPrivileges"] == "yes"
    assert keys["ProtectSystem"] == "strict" and keys["KillSignal"] == "SIGTERM"
    limit = parse_size(read_env_file(DEPLOY / "systemd" / "smp.env")["SMP_MEMORY_LIMIT"])
    assert parse_size(keys["MemoryHigh"]) > limit and parse_size(keys["MemoryMax"]) > limit
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    # verify checks that ExecStart's program exists: point it at this environment's smp
    smp = Path(sys.executable).with_name("smp")
    local = tmp_path / "ecsnap-smp@.service"
    local.write_text(unit.replace("/opt/ecsnap/bin/smp", str(smp)))
    out = subprocess.run(
        [analyze, "verify", str(local)], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 even for unknown keys; it reports them on stderr, naming the file
    problems = [line for line in (out.stdout + out.stderr).splitlines() if "ecsnap-smp" in line]
    assert out.returncode == 0 and not problems, out.stdout + out.stderr


def test_container_image_has_no_torch_and_a_healthcheck() -> None:
    text = (DEPLOY / "container" / "Dockerfile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.startswith("#"))
    assert "torch" not in code
    assert "HEALTHCHECK" in code and '"smp", "status"' in code
    assert re.search(r"^USER \d+", code, re.MULTILINE)  # not root
    assert 'ENTRYPOINT ["smp"]' in code


def test_slurm_script_is_valid_bash_and_uses_smp_launch() -> None:
    script = DEPLOY / "slurm" / "ecsnap.sbatch"
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    text = script.read_text()
    assert "smp serve" in text and "smp launch" in text and "smp stop" in text
