"""Every YAML file under clusters/ is checked; one of a kind nobody checks fails.

Cluster-launcher configs: the JSON schema shipped inside the installed `ray` package, then Ray's own
preparation and validation (what `ray up` runs before it talks to a cloud). KubeRay manifests: a structural
check of the fields KubeRay and its autoscaler read, then Ray's own translation of a RayCluster spec into
autoscaler node types. Both: our expectations (a head that runs nothing, GPU worker types for synthesis and
training with distinct accelerator labels, scale-from-zero with bounded maxima), and a simulation with Ray's
autoscaler scheduler that the paper preset's stage requests land on the intended node types.
No Ray instance, no network, no model.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
CLUSTERS = REPO / "clusters"
PAPER_CONFIG = REPO / "configs" / "paper-llama3-8b.yaml"
MAX_WORKER_NODES = 32      # sanity bound per config: a typo must not allow hundreds of GPU nodes
TRAIN_NODE_GPUS = 8        # the paper trains on one 8-GPU node
ACCELERATOR = "accelerator_type:"
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def cluster_files(root: Path = CLUSTERS) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file())


def load(path: Path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    if len(docs) != 1:
        raise AssertionError(f"{path}: expected one YAML document, found {len(docs)}")
    return docs[0]


def kind_of(doc) -> str:
    if not isinstance(doc, dict):
        return "unknown"
    if "provider" in doc and "available_node_types" in doc and "apiVersion" not in doc:
        return "launcher"
    if str(doc.get("apiVersion", "")).startswith("ray.io/") and doc.get("kind") in ("RayCluster", "RayJob"):
        return doc["kind"]
    return "unknown"


def problems_for(doc) -> list[str]:
    kind = kind_of(doc)
    if kind == "launcher":
        return launcher_problems(doc)
    if kind == "RayCluster":
        return raycluster_problems(doc)
    if kind == "RayJob":
        return rayjob_problems(doc)
    return ["unknown kind of file: not a Ray cluster-launcher config, RayCluster or RayJob "
            "(add a check for it to tests/unit/test_clusters.py)"]


# -- cluster launcher -----------------------------------------------------------------------------------------

def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def launcher_problems(cfg: dict) -> list[str]:
    import jsonschema

    out = [f"schema: {'/'.join(map(str, e.absolute_path)) or '<top>'}: {e.message}"
           for e in jsonschema.Draft7Validator(ray_schema()).iter_errors(cfg)]
    if out:
        return out
    try:  # what `ray up` does before it calls the cloud: merge defaults, fill node-type bounds, validate
        from ray.autoscaler._private.util import prepare_config, validate_config

        validate_config(prepare_config(copy.deepcopy(cfg)))
    except ImportError:
        pass  # a private Ray module moved; the schema check above still ran
    except Exception as exc:  # noqa: BLE001 - report Ray's own message
        out.append(f"ray validate_config: {exc}")

    types = cfg["available_node_types"]
    head = types.get(cfg.get("head_node_type"), {})
    if head.get("resources", {}).get("CPU") != 0:
        out.append("head: resources.CPU must be 0 (no work scheduled on the head)")
    if head.get("resources", {}).get("GPU", 0) != 0:
        out.append("head: must have no GPUs")
    max_workers = cfg.get("max_workers")
    if not isinstance(max_workers, int) or not 0 < max_workers <= MAX_WORKER_NODES:
        out.append(f"max_workers must be set, between 1 and {MAX_WORKER_NODES}")
        max_workers = MAX_WORKER_NODES
    workers = {name: t for name, t in types.items() if name != cfg.get("head_node_type")}
    for name, t in workers.items():
        lo, hi = t.get("min_workers"), t.get("max_workers")
        if lo != 0:
            out.append(f"{name}: min_workers must be 0 (scale from zero)")
        if not isinstance(hi, int) or hi < (lo or 0) or hi > max_workers:
            out.append(f"{name}: need min_workers <= max_workers <= global max_workers ({max_workers})")
    out += gpu_type_problems({n: t.get("resources", {}) for n, t in workers.items()})
    if not cfg.get("idle_timeout_minutes", 0) > 0:
        out.append("idle_timeout_minutes must be > 0 (idle GPU nodes are given back)")
    mounts = [m.rstrip("/") for m in cfg.get("file_mounts", {})]
    setup = " ".join(cfg.get("setup_commands", []))
    if "pip install" not in setup or not any(m in setup for m in mounts):
        out.append("setup_commands must pip-install the project from a file_mounts destination")
    return out


def gpu_type_problems(resources_by_type: dict[str, dict]) -> list[str]:
    """A 1-GPU type (synthesis) and an 8-GPU type (training), each with its own accelerator label."""
    def labels(res):
        return {k for k in res if k.startswith(ACCELERATOR)}

    synth = {n: r for n, r in resources_by_type.items() if r.get("GPU") == 1 and labels(r)}
    train = {n: r for n, r in resources_by_type.items() if r.get("GPU") == TRAIN_NODE_GPUS and labels(r)}
    out = []
    if not synth:
        out.append("no 1-GPU worker type with an accelerator_type label (synthesis)")
    if not train:
        out.append(f"no {TRAIN_NODE_GPUS}-GPU worker type with an accelerator_type label (training)")
    if synth and train and set().union(*map(labels, synth.values())) & set().union(*map(labels, train.values())):
        out.append("synthesis and training types share an accelerator label: resources.accelerator_type "
                   "could not keep model actors off the training nodes")
    return out


# -- KubeRay --------------------------------------------------------------------------------------------------

def metadata_problems(doc: dict) -> list[str]:
    name = (doc.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not DNS_1123.match(name):
        return ["metadata.name must be a DNS-1123 name"]
    return []


def pod_problems(template, where: str, head: bool) -> list[str]:
    containers = ((template or {}).get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        return [f"{where}: template.spec.containers must be a non-empty list"]
    out = []
    for c in containers:
        if not isinstance(c, dict) or not c.get("name") or not c.get("image"):
            out.append(f"{where}: every container needs a name and an image")
            continue
        res = c.get("resources") or {}
        gpus = [(res.get(k) or {}).get("nvidia.com/gpu") for k in ("requests", "limits")]
        if head and any(gpus):
            out.append(f"{where}: the head must not request GPUs")
        if gpus[0] is not None and gpus[0] != gpus[1]:
            out.append(f"{where}: nvidia.com/gpu requests and limits must be equal")
        if not (res.get("limits") or {}).get("cpu"):
            out.append(f"{where}: set a CPU limit (the autoscaler reads CPUs from it)")
    return out


def ray_start_params_problems(params, where: str) -> list[str]:
    if not isinstance(params, dict) or not all(isinstance(v, str) for v in params.values()):
        return [f"{where}: rayStartParams must map names to strings"]
    return []


def cluster_spec_problems(spec, where: str = "spec") -> list[str]:
    if not isinstance(spec, dict):
        return [f"{where}: missing"]
    out = []
    if spec.get("enableInTreeAutoscaling") is not True:
        out.append(f"{where}.enableInTreeAutoscaling must be true")
    version = spec.get("rayVersion")
    if not isinstance(version, str) or not re.match(r"^\d+\.\d+\.\d+$", version):
        out.append(f"{where}.rayVersion must be a quoted version like \"2.60.0\"")
    head = spec.get("headGroupSpec")
    if not isinstance(head, dict):
        return out + [f"{where}.headGroupSpec: missing"]
    out += ray_start_params_problems(head.get("rayStartParams"), f"{where}.headGroupSpec")
    if (head.get("rayStartParams") or {}).get("num-cpus") != "0":
        out.append(f"{where}.headGroupSpec.rayStartParams.num-cpus must be \"0\" (no work on the head)")
    out += pod_problems(head.get("template"), f"{where}.headGroupSpec", head=True)
    groups = spec.get("workerGroupSpecs")
    if not isinstance(groups, list) or not groups:
        return out + [f"{where}.workerGroupSpecs must be a non-empty list"]
    names = [g.get("groupName") for g in groups if isinstance(g, dict)]
    if len(names) != len(groups) or not all(isinstance(n, str) and DNS_1123.match(n) for n in names):
        out.append(f"{where}.workerGroupSpecs: every group needs a groupName (DNS-1123)")
    if len(set(names)) != len(names):
        out.append(f"{where}.workerGroupSpecs: groupNames must be unique")
    for i, g in enumerate(g for g in groups if isinstance(g, dict)):
        gw = f"{where}.workerGroupSpecs[{g.get('groupName', i)}]"
        lo, hi, n = g.get("minReplicas"), g.get("maxReplicas"), g.get("replicas", g.get("minReplicas"))
        if not all(isinstance(x, int) for x in (lo, hi, n)) or not 0 <= lo <= n <= hi <= MAX_WORKER_NODES:
            out.append(f"{gw}: need 0 <= minReplicas <= replicas <= maxReplicas <= {MAX_WORKER_NODES}")
        elif lo != 0:
            out.append(f"{gw}: minReplicas must be 0 (scale from zero)")
        out += ray_start_params_problems(g.get("rayStartParams", {}), gw)
        out += pod_problems(g.get("template"), gw, head=False)
    if out:
        return out
    try:  # the node types Ray's KubeRay autoscaler derives from this spec
        from ray.autoscaler._private.kuberay.autoscaling_config import (
            _generate_available_node_types_from_ray_cr_spec,
        )
    except ImportError:
        return out
    types = _generate_available_node_types_from_ray_cr_spec(copy.deepcopy(spec))
    head_res = types.pop("headgroup")["resources"]
    if head_res.get("CPU") != 0 or head_res.get("GPU", 0):
        out.append(f"{where}: the autoscaler sees CPU/GPU on the head: {head_res}")
    out += [f"{where}: {p}" for p in gpu_type_problems({n: t["resources"] for n, t in types.items()})]
    for c in all_containers(spec):
        tag = c["image"].rsplit(":", 1)[-1]
        if not (tag == version or tag.startswith(f"{version}-") or f"ray{version}" in tag):
            out.append(f"{where}: image {c['image']} does not carry rayVersion {version} in its tag")
    return out


def all_containers(spec: dict) -> list[dict]:
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def raycluster_problems(doc: dict) -> list[str]:
    out = [] if doc.get("apiVersion") == "ray.io/v1" else ["apiVersion must be ray.io/v1"]
    return out + metadata_problems(doc) + cluster_spec_problems(doc.get("spec"))


def rayjob_problems(doc: dict) -> list[str]:
    from ray_entigraph.config import ConfigError, load_config

    out = [] if doc.get("apiVersion") == "ray.io/v1" else ["apiVersion must be ray.io/v1"]
    out += metadata_problems(doc)
    spec = doc.get("spec") or {}
    entry = spec.get("entrypoint")
    if not isinstance(entry, str) or not entry.startswith("ray-entigraph "):
        out.append("spec.entrypoint must be a ray-entigraph command")
    else:
        args = shlex.split(entry)[2:]
        if "--config" not in args or args.index("--config") + 1 >= len(args):
            out.append("spec.entrypoint must name a --config file")
        else:
            i = args.index("--config")
            path, overrides = REPO / args[i + 1], [a for a in args[i + 2:] if "=" in a and not a.startswith("-")]
            if not path.is_file():
                out.append(f"spec.entrypoint: config {args[i + 1]} does not exist in the repository")
            else:
                try:  # the entrypoint's own overrides must be valid keys and values
                    load_config(path, overrides)
                except ConfigError as exc:
                    out.append(f"spec.entrypoint: {exc}")
    if not isinstance(spec.get("shutdownAfterJobFinishes"), bool):
        out.append("spec.shutdownAfterJobFinishes must be set (true or false)")
    if "runtimeEnvYAML" in spec:
        env = yaml.safe_load(spec["runtimeEnvYAML"]) if isinstance(spec["runtimeEnvYAML"], str) else None
        if not isinstance(env, dict):
            out.append("spec.runtimeEnvYAML must be a YAML mapping in a string")
    return out + cluster_spec_problems(spec.get("rayClusterSpec"), "spec.rayClusterSpec")


# -- the shipped files ----------------------------------------------------------------------------------------

FILES = cluster_files()


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(CLUSTERS)) for p in FILES])
def test_every_yaml_under_clusters_is_known_and_valid(path):
    assert problems_for(load(path)) == []


def test_the_expected_files_are_there():
    found = {str(p.relative_to(CLUSTERS)) for p in FILES}
    assert {"aws.yaml", "gcp.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"} <= found


def test_rayjob_embeds_the_raycluster_spec():
    cluster = load(CLUSTERS / "kuberay" / "raycluster.yaml")["spec"]
    assert load(CLUSTERS / "kuberay" / "rayjob.yaml")["spec"]["rayClusterSpec"] == cluster


def test_all_files_target_one_ray_version():
    versions = set()
    for path in FILES:
        doc = load(path)
        if kind_of(doc) == "launcher":
            versions.add(re.search(r":(\d+\.\d+\.\d+)", doc["docker"]["image"]).group(1))
        elif kind_of(doc) == "RayCluster":
            versions.add(doc["spec"]["rayVersion"])
        elif kind_of(doc) == "RayJob":
            versions.add(doc["spec"]["rayClusterSpec"]["rayVersion"])
    assert len(versions) == 1, versions


# -- the autoscaler picks the intended node types for the paper preset's requests ---------------------------

def node_types_of(path: Path) -> dict[str, dict]:
    doc = load(path)
    if kind_of(doc) == "launcher":
        from ray.autoscaler._private.util import prepare_config

        cfg = prepare_config(copy.deepcopy(doc))
        return {n: t for n, t in cfg["available_node_types"].items() if n != cfg["head_node_type"]}
    from ray.autoscaler._private.kuberay.autoscaling_config import _generate_available_node_types_from_ray_cr_spec

    spec = doc["spec"] if kind_of(doc) == "RayCluster" else doc["spec"]["rayClusterSpec"]
    types = _generate_available_node_types_from_ray_cr_spec(copy.deepcopy(spec))
    types.pop("headgroup")
    return types


def nodes_for(types: dict[str, dict], demands: list[dict]) -> dict[str, int]:
    from functools import partial

    from ray.autoscaler._private.node_provider_availability_tracker import NodeAvailabilitySummary
    from ray.autoscaler._private.resource_demand_scheduler import _default_utilization_scorer, get_nodes_for

    scorer = partial(_default_utilization_scorer, node_availability_summary=NodeAvailabilitySummary({}))
    head = {"head": {"resources": {"CPU": 0}, "max_workers": 0, "node_config": {}}}
    added, unfulfilled = get_nodes_for({**types, **head}, {}, "head", 64, demands, scorer)
    assert not unfulfilled, unfulfilled
    return dict(added)


@pytest.mark.parametrize("path", [p for p in FILES if kind_of(load(p)) in ("launcher", "RayCluster")],
                         ids=lambda p: str(p.relative_to(CLUSTERS)))
def test_paper_stage_requests_land_on_the_intended_node_types(path):
    from ray_entigraph.config import load_config

    cfg = load_config(PAPER_CONFIG)
    types = node_types_of(path)
    synth = next(n for n, t in types.items() if t["resources"].get("GPU") == 1)
    train = next(n for n, t in types.items() if t["resources"].get("GPU") == TRAIN_NODE_GPUS)
    label = next(k for k in types[synth]["resources"] if k.startswith(ACCELERATOR))
    res = cfg.resources
    # Ray Data model actors at full pool size, pinned with resources.accelerator_type (as clusters/README.md says)
    actor = {"CPU": res.num_cpus_per_actor, "GPU": res.num_gpus_per_actor, label: 0.001}
    assert nodes_for(types, [actor] * res.max_actors) == {synth: res.max_actors}
    # Ray Train workers: num_workers bundles of {CPU, GPU: 1}
    worker = {"CPU": cfg.train.cpus_per_worker, "GPU": 1}
    assert nodes_for(types, [worker] * cfg.train.num_workers) == {train: cfg.train.num_workers // TRAIN_NODE_GPUS}
    # CPU-only work (Ray Data reads, packing) does not start a GPU node
    assert all(types[n]["resources"].get("GPU", 0) == 0 for n in nodes_for(types, [{"CPU": 1}] * 4))
    # nor do the CPU stages' and packing's own pools at full size (resources.cpu, resources.pack)
    for pool in (res.cpu, res.pack):
        added = nodes_for(types, [{"CPU": pool.num_cpus_per_worker}] * pool.max_workers)
        assert added and all(types[n]["resources"].get("GPU", 0) == 0 for n in added), (pool, added)


@pytest.mark.parametrize("path", [p for p in FILES if kind_of(load(p)) in ("launcher", "RayCluster")],
                         ids=lambda p: str(p.relative_to(CLUSTERS)))
def test_the_rewrite_presets_pools_land_on_synthesis_and_cpu_nodes(path):
    """The corpus-rewriting preset's model actors at full pool size fit the 1-GPU synthesis type only, and its
    CPU pools start no GPU node."""
    from ray_entigraph.config import load_config

    res = load_config(REPO / "configs" / "rewrite-corpus.yaml").resources
    types = node_types_of(path)
    synth = next(n for n, t in types.items() if t["resources"].get("GPU") == 1)
    label = next(k for k in types[synth]["resources"] if k.startswith(ACCELERATOR))
    actor = {"CPU": res.num_cpus_per_actor, "GPU": res.num_gpus_per_actor, label: 0.001}
    assert nodes_for(types, [actor] * res.max_actors) == {synth: res.max_actors}
    for pool in (res.cpu, res.pack):
        added = nodes_for(types, [{"CPU": pool.num_cpus_per_worker}] * pool.max_workers)
        assert added and all(types[n]["resources"].get("GPU", 0) == 0 for n in added), (pool, added)


# -- the checks themselves can fail -------------------------------------------------------------------------

def _set(doc, dotted: str, value):
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


_DELETE = object()

BROKEN = [
    ("aws.yaml", "available_node_types.head.resources", {"CPU": 0, "GPU": 1}, "head: must have no GPUs"),
    ("aws.yaml", "available_node_types.head.resources", {}, "resources.CPU must be 0"),
    ("aws.yaml", "available_node_types.gpu_synth.min_workers", 3, "min_workers must be 0"),
    ("aws.yaml", "available_node_types.gpu_synth.max_workers", 40, "max_workers <= global max_workers"),
    ("aws.yaml", "max_workers", 500, "between 1 and"),
    ("aws.yaml", "available_node_types.gpu_train", _DELETE, "8-GPU worker type"),
    ("aws.yaml", "available_node_types.gpu_synth.resources", {"CPU": 8, "GPU": 0.5}, "schema:"),
    ("aws.yaml", "head_node_typo", "head", "schema:"),
    ("gcp.yaml", "available_node_types.gpu_synth.resources", {"CPU": 12, "GPU": 1, "accelerator_type:H100": 1},
     "share an accelerator label"),
    ("gcp.yaml", "setup_commands", [], "pip-install the project"),
    ("gcp.yaml", "head_node_type", "nowhere", "ray validate_config"),
    ("kuberay/raycluster.yaml", "spec.workerGroupSpecs.1.minReplicas", 5, "minReplicas <= replicas"),
    ("kuberay/raycluster.yaml", "spec.workerGroupSpecs.2.maxReplicas", 100, "maxReplicas <= "),
    ("kuberay/raycluster.yaml", "spec.workerGroupSpecs.0.groupName", _DELETE, "groupName"),
    ("kuberay/raycluster.yaml", "spec.headGroupSpec.template.spec.containers", [], "non-empty list"),
    ("kuberay/raycluster.yaml", "spec.headGroupSpec.rayStartParams.num-cpus", "8", "no work on the head"),
    ("kuberay/raycluster.yaml", "spec.workerGroupSpecs.1.rayStartParams", {"num-gpus": 1}, "to strings"),
    ("kuberay/raycluster.yaml", "spec.workerGroupSpecs.2.rayStartParams", {}, "8-GPU worker type"),
    ("kuberay/raycluster.yaml", "spec.enableInTreeAutoscaling", False, "enableInTreeAutoscaling"),
    ("kuberay/raycluster.yaml", "apiVersion", "ray.io/v1alpha1", "apiVersion must be"),
    ("kuberay/raycluster.yaml", "metadata.name", "Ray_EntiGraph", "DNS-1123"),
    ("kuberay/rayjob.yaml", "spec.entrypoint", _DELETE, "entrypoint must be"),
    ("kuberay/rayjob.yaml", "spec.entrypoint", "ray-entigraph run --config configs/nope.yaml", "does not exist"),
    ("kuberay/rayjob.yaml", "spec.entrypoint", "ray-entigraph run --config configs/paper-llama3-8b.yaml "
     "resources.acelerator_type=L40S", "unknown key"),
    ("kuberay/rayjob.yaml", "spec.rayClusterSpec", _DELETE, "rayClusterSpec: missing"),
    ("kuberay/rayjob.yaml", "spec.shutdownAfterJobFinishes", _DELETE, "shutdownAfterJobFinishes"),
]


@pytest.mark.parametrize("name,key,value,expected", BROKEN, ids=[f"{b[0]}:{b[1]}" for b in BROKEN])
def test_checks_catch_a_broken_copy(name, key, value, expected):
    doc = copy.deepcopy(load(CLUSTERS / name))
    assert problems_for(doc) == []
    _set(doc, key, value)
    problems = problems_for(doc)
    assert any(expected in p for p in problems), problems


def test_a_yaml_of_unknown_kind_fails(tmp_path):
    (tmp_path / "kuberay").mkdir()
    for path in FILES:
        (tmp_path / path.relative_to(CLUSTERS)).write_text(path.read_text())
    (tmp_path / "kuberay" / "rayservice.yml").write_text(
        "apiVersion: ray.io/v1\nkind: RayService\nmetadata: {name: x}\n")
    found = cluster_files(tmp_path)
    assert len(found) == len(FILES) + 1
    failing = [p.name for p in found if problems_for(load(p))]
    assert failing == ["rayservice.yml"]
