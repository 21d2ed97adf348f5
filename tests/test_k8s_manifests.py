"""The deployment files under infra/k8s/, checked offline as the cluster and Helm would check them.

Every Kubernetes object (the MLflow Deployment and Service, the S3 secret template) is validated against the
Kubernetes API's JSON schemas that kubernetes-validate ships, unknown fields rejected. The Dagster chart values
(dagster-values.yaml) are merged over the chart's defaults and validated against the chart's own
values.schema.json, as `helm install` does, and then on their own with every key checked, since the chart's
schema lets unknown keys through in many places. The chart's schema and defaults are vendored in
infra/k8s/schema/ (its README names the source); the Kubernetes objects inside the values are resolved
against kubernetes-validate's definitions instead of the URL the chart names. Every check is also run on
broken copies, which it must reject.
"""

import copy
import importlib.resources
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[1]
K8S_DIR = ROOT / "infra" / "k8s"
VALUES = K8S_DIR / "dagster-values.yaml"
CHART_SCHEMA = K8S_DIR / "schema" / "dagster-chart.values.schema.json"
CHART_DEFAULTS = K8S_DIR / "schema" / "dagster-chart.values.yaml"
KUBERNETES = "1.31.0"  # the Kubernetes API release everything is checked against
LENIENT = "urn:vitforge:kubernetes-lenient"  # Kubernetes definitions that allow unknown keys

DEPLOYMENT = "mlflow.yaml:Deployment/mlflow"
SERVICE = "mlflow.yaml:Service/mlflow"
SECRET = "s3-secret.template.yaml:Secret/vitforge-s3"


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def manifests() -> dict[str, dict]:
    """Every object of infra/k8s/*.yaml but the Helm values, by ``file:Kind/name``."""
    objects = {}
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path != VALUES:
            for obj in yaml.safe_load_all(path.read_text()):
                objects[f"{path.name}:{obj['kind']}/{obj['metadata']['name']}"] = obj
    return objects


MANIFESTS = manifests()


def secret_keys(objects: dict[str, dict]) -> dict[str, set[str]]:
    """The keys of each Secret defined here, by name."""
    return {o["metadata"]["name"]: set(o.get("stringData", {})) | set(o.get("data", {}))
            for o in objects.values() if o["kind"] == "Secret"}


# ---- Kubernetes objects --------------------------------------------------------------------------------------

def kubernetes_errors(obj: dict) -> list[str]:
    try:
        kubernetes_validate.validate(obj, KUBERNETES, strict=True)
    except kubernetes_validate.ValidationError as e:
        return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"]
    return []


def mlflow_errors(objects: dict[str, dict]) -> list[str]:
    """What the schemas cannot see: the Service reaches the pods, the readiness probe asks MLflow's /health,
    the server accepts its own Service's Host header, and every $(NAME) of its command line is set."""
    deployment, service = objects[DEPLOYMENT], objects[SERVICE]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    labels, errors = pod["metadata"].get("labels", {}), []
    for who, selector in (("Deployment", deployment["spec"]["selector"]["matchLabels"]),
                          ("Service", service["spec"]["selector"])):
        if not selector.items() <= labels.items():
            errors.append(f"the {who} selects {selector}, the pods are labelled {labels}")
    ports = {p.get("name") for p in container["ports"]} | {p["containerPort"] for p in container["ports"]}
    errors += [f"Service port {p['port']} targets {p['targetPort']!r}, not a container port"
               for p in service["spec"]["ports"] if p["targetPort"] not in ports]
    probe = container.get("readinessProbe", {}).get("httpGet", {})
    if probe.get("path") != "/health" or probe.get("port") not in ports:
        errors.append(f"the readiness probe asks {probe}, not /health on a container port")
    args = container["command"] + container["args"]
    host = f"{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    for allowed in (a.split("=", 1)[1].split(",") for a in args if a.startswith("--allowed-hosts=")):
        if host not in allowed:
            errors.append(f"--allowed-hosts {allowed} refuses the Service's Host header {host}")
    keys = secret_keys(objects)
    env = {e["name"] for e in container.get("env", [])}
    for source in container.get("envFrom", []):
        name = source["secretRef"]["name"]
        env |= keys.get(name, set())
        if name not in keys:
            errors.append(f"envFrom secret {name} has no template in infra/k8s")
    errors += [f"$({name}) is not in the container's environment"
               for name in re.findall(r"\$\((\w+)\)", " ".join(args)) if name not in env]
    return errors


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_object_is_valid_kubernetes(name):
    assert kubernetes_errors(MANIFESTS[name]) == []


def test_the_manifests_are_all_there():
    assert {DEPLOYMENT, SERVICE, SECRET} <= set(MANIFESTS)


def test_the_secret_template_holds_placeholders_only():
    values = MANIFESTS[SECRET]["stringData"]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
            "VITFORGE_BUCKET"} <= set(values)
    assert set(values.values()) == {"REPLACE_ME"}


def test_mlflow_server_is_wired():
    assert mlflow_errors(MANIFESTS) == []


def mlflow_container(objects: dict[str, dict]) -> dict:
    return objects[DEPLOYMENT]["spec"]["template"]["spec"]["containers"][0]


def rename(mapping: dict, old: str, new: str) -> None:
    mapping[new] = mapping.pop(old)


def replace_arg(objects: dict[str, dict], option: str, arg: str) -> None:
    args = mlflow_container(objects)["args"]
    args[:] = [arg if a.startswith(option) else a for a in args]


BROKEN_OBJECTS: dict[str, tuple[str, Callable[[dict], None]]] = {
    "misspelled field": (DEPLOYMENT, lambda o: rename(mlflow_container(o), "readinessProbe", "readinesProbe")),
    "replicas as text": (DEPLOYMENT, lambda o: o[DEPLOYMENT]["spec"].update(replicas="one")),
    "container without a name": (DEPLOYMENT, lambda o: mlflow_container(o).pop("name")),
    "port as text": (SERVICE, lambda o: o[SERVICE]["spec"]["ports"][0].update(port="5000")),
    "secret value as a number": (SECRET, lambda o: o[SECRET]["stringData"].update(AWS_ACCESS_KEY_ID=1234)),
}


@pytest.mark.parametrize("case", sorted(BROKEN_OBJECTS))
def test_broken_object_is_rejected(case):
    name, break_it = BROKEN_OBJECTS[case]
    objects = copy.deepcopy(MANIFESTS)
    break_it(objects)
    assert kubernetes_errors(objects[name])


BROKEN_MLFLOW: dict[str, Callable[[dict], None]] = {
    "pods relabelled": lambda o: o[DEPLOYMENT]["spec"]["template"]["metadata"].update(labels={"app": "mlflow"}),
    "unknown target port": lambda o: o[SERVICE]["spec"]["ports"][0].update(targetPort="web"),
    "probe on another path": lambda o: mlflow_container(o)["readinessProbe"]["httpGet"].update(path="/healthz"),
    "Service host refused": lambda o: replace_arg(o, "--allowed-hosts=", "--allowed-hosts=localhost:*"),
    "misspelled variable": lambda o: replace_arg(o, "--artifacts-destination=",
                                                 "--artifacts-destination=$(VITFORGE_BUKET)/mlflow"),
    "unknown secret": lambda o: mlflow_container(o).update(envFrom=[{"secretRef": {"name": "vitforge-s4"}}]),
}


@pytest.mark.parametrize("case", sorted(BROKEN_MLFLOW))
def test_broken_mlflow_wiring_is_rejected(case):
    objects = copy.deepcopy(MANIFESTS)
    BROKEN_MLFLOW[case](objects)
    assert mlflow_errors(objects)


# ---- Dagster Helm values -------------------------------------------------------------------------------------

def helm_merge(defaults: dict, values: dict) -> dict:
    """Helm's coalescing of values over a chart's defaults: maps merge key by key, anything else (lists
    included) replaces, and null removes the default."""
    merged = dict(defaults)
    for key, value in values.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = helm_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def refs(schema) -> Iterator[str]:
    if isinstance(schema, dict):
        if isinstance(schema.get("$ref"), str):
            yield schema["$ref"]
        for value in schema.values():
            yield from refs(value)
    elif isinstance(schema, list):
        for value in schema:
            yield from refs(value)


def kubernetes_definitions(strict: bool) -> Resource:
    """kubernetes-validate's definitions, laid out as the chart's refs expect (yannh's #/definitions/...)."""
    folder = f"v{KUBERNETES}-local" + ("-strict" if strict else "")
    path = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder / "_definitions.json"
    contents = json.loads(path.read_text())
    del contents["$id"]  # each copy is registered under the URI that refers to it
    contents["definitions"] = contents["$defs"]
    return Resource.from_contents(contents)


def own_values_schema(schema: dict, defaults: dict) -> dict:
    """The chart's schema for a values file alone: nothing is required (the chart's defaults fill it in), and
    an object whose schema names its keys takes no other, so a misspelled key fails where the chart lets it
    through. The top level also takes the keys the chart's defaults have; the chart's own keys beside a
    Kubernetes object (a probe's ``enabled``) are checked against lenient Kubernetes definitions. A key the
    chart reads but its schema does not name (a user deployment's ``service``) is refused too."""
    def strict(node):
        if isinstance(node, list):
            return [strict(n) for n in node]
        if not isinstance(node, dict):
            return node
        out = {}
        for key, value in node.items():
            if key in ("properties", "$defs", "patternProperties"):
                out[key] = {name: strict(n) for name, n in value.items()}
            elif key in ("if", "then", "else", "default", "const", "enum"):
                out[key] = value
            elif key != "required":
                out[key] = strict(value)
        if out.get("properties"):
            if not out.get("$ref", "#").startswith("#"):
                out["$ref"] = f"{LENIENT}#{out['$ref'].split('#', 1)[1]}"
            elif "additionalProperties" not in out:
                out["additionalProperties"] = False
        return out

    own = strict(schema)
    own["properties"] |= {key: {} for key in defaults if key not in own["properties"]}
    own["additionalProperties"] = False
    return own


def chart_validators() -> tuple[jsonschema.Validator, jsonschema.Validator]:
    """Validators for merged values (the chart's schema as it is) and for our values alone."""
    schema = json.loads(CHART_SCHEMA.read_text())
    external = {ref.split("#")[0] for ref in refs(schema) if not ref.startswith("#")}
    assert external and all(uri.endswith("/_definitions.json") for uri in external), external

    def validator(schema: dict, strict: bool) -> jsonschema.Validator:
        registry = Registry().with_resources(
            [(uri, kubernetes_definitions(strict)) for uri in external]
            + [(LENIENT, kubernetes_definitions(strict=False))])
        return jsonschema.Draft202012Validator(schema, registry=registry)

    return validator(schema, strict=False), validator(own_values_schema(schema, load_yaml(CHART_DEFAULTS)), True)


MERGED, OWN = chart_validators()


def chart_errors(values: dict) -> list[str]:
    """Problems with Dagster values, as Helm sees them (merged over the defaults) and key by key."""
    def describe(e: jsonschema.ValidationError) -> str:
        while e.context:  # an anyOf: the branch that got deepest into the value says what is wrong
            e = max(e.context, key=lambda branch: len(branch.absolute_path))
        return f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
    merged = helm_merge(load_yaml(CHART_DEFAULTS), values)
    return ([f"merged {describe(e)}" for e in MERGED.iter_errors(merged)]
            + [describe(e) for e in OWN.iter_errors(values)])


def run_launcher(values: dict) -> dict:
    return values["runLauncher"]["config"]["k8sRunLauncher"]


def code_location(values: dict) -> dict:
    return values["dagster-user-deployments"]["deployments"][0]


def run_queue(values: dict) -> dict:
    return values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]


def dagster_errors(values: dict, objects: dict[str, dict]) -> list[str]:
    """What the deployment relies on: one queued run per target, a cap on all runs, and run pods that get
    the code location's prod environment and secrets, each secret with a template here."""
    errors = []
    coordinator, queue = values["dagsterDaemon"]["runCoordinator"], run_queue(values)
    per_target = {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    if coordinator["type"] != "QueuedRunCoordinator" or per_target not in (queue.get("tagConcurrencyLimits") or []):
        errors.append(f"no queue limit of one run per dagster/partition value: {coordinator}")
    if not isinstance(queue.get("maxConcurrentRuns"), int):
        errors.append("no overall maxConcurrentRuns")
    launcher, code = run_launcher(values), code_location(values)
    run_env = dict(v.split("=", 1) for v in launcher["envVars"])
    code_env = {e["name"]: e["value"] for e in code["env"]}
    if values["runLauncher"]["type"] != "K8sRunLauncher" or run_env.get("VITFORGE_DEPLOYMENT") != "prod":
        errors.append(f"runs are not K8sRunLauncher pods with VITFORGE_DEPLOYMENT=prod: {values['runLauncher']}")
    if run_env != code_env:
        errors.append(f"run pods get {run_env}, the code location has {code_env}")
    if code["dagsterApiGrpcArgs"][:2] != ["-m", "assets.definitions"]:
        errors.append(f"the code location does not load assets.definitions: {code['dagsterApiGrpcArgs']}")
    secrets = [s["name"] for s in launcher["envSecrets"]]
    if secrets != [s["name"] for s in code["envSecrets"]]:
        errors.append(f"run pods get the secrets {secrets}, the code location {code['envSecrets']}")
    errors += [f"secret {s} has no template in infra/k8s" for s in secrets if s not in secret_keys(objects)]
    return errors


def unset_variables(values: dict, objects: dict[str, dict]) -> set[str]:
    """Each EnvVar("NAME") of the code location (which Dagster needs set when a run starts) that run pods lack."""
    launcher = run_launcher(values)
    provided = {v.split("=", 1)[0] for v in launcher["envVars"]}
    provided |= {key for s in launcher["envSecrets"] for key in secret_keys(objects).get(s["name"], set())}
    read = {name for path in (ROOT / "assets").glob("*.py")
            for name in re.findall(r"EnvVar(?:\.int)?\(\s*[\"'](\w+)[\"']", path.read_text())}
    assert read, "no EnvVar(...) found under assets/"
    return read - provided


def test_chart_defaults_alone_are_valid():
    assert [e.message for e in MERGED.iter_errors(load_yaml(CHART_DEFAULTS))] == []


def test_dagster_values_are_valid_for_the_chart():
    assert chart_errors(load_yaml(VALUES)) == []


def test_dagster_values_deploy_vitforge():
    assert dagster_errors(load_yaml(VALUES), MANIFESTS) == []


def test_run_pods_get_every_variable_the_definitions_read():
    assert unset_variables(load_yaml(VALUES), MANIFESTS) == set()


def test_run_pods_without_the_secret_lack_variables():
    values = load_yaml(VALUES)
    run_launcher(values)["envSecrets"] = []
    assert unset_variables(values, MANIFESTS)


BROKEN_VALUES: dict[str, tuple[Callable[[dict], None], str]] = {
    "misspelled queue key": (lambda v: rename(run_queue(v), "tagConcurrencyLimits", "tagConcurencyLimits"),
                             "'tagConcurencyLimits' was unexpected"),
    "misspelled code location key": (lambda v: rename(code_location(v), "dagsterApiGrpcArgs", "dagsterApiGrpcArg"),
                                     "'dagsterApiGrpcArg' was unexpected"),
    "misspelled top-level key": (lambda v: rename(v, "runLauncher", "runLaunchr"), "'runLaunchr' was unexpected"),
    "misspelled Kubernetes field": (lambda v: rename(code_location(v)["resources"], "requests", "requets"),
                                    "'requets' was unexpected"),
    "limit as text": (lambda v: run_queue(v)["tagConcurrencyLimits"][0].update(limit="1"),
                      "'1' is not of type 'integer'"),
    "unknown run launcher": (lambda v: v["runLauncher"].update(type="K8sJobLauncher"),
                             "'K8sJobLauncher' is not one of"),
    "env entry without a name": (lambda v: code_location(v)["env"][0].pop("name"), "'name' is a required property"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_VALUES))
def test_broken_dagster_values_are_rejected(case):
    values = load_yaml(VALUES)
    break_it, expected = BROKEN_VALUES[case]
    break_it(values)
    errors = chart_errors(values)
    assert any(expected in e for e in errors), errors


def unknown_secret(values: dict) -> None:
    for holder in (code_location(values), run_launcher(values)):
        holder["envSecrets"] = [{"name": "vitforge-s4"}]


BROKEN_DEPLOYMENT: dict[str, Callable[[dict], None]] = {
    "two runs per target": lambda v: run_queue(v)["tagConcurrencyLimits"][0].update(limit=2),
    "one limit shared by all targets": lambda v: run_queue(v)["tagConcurrencyLimits"][0].update(value=None),
    "no overall cap": lambda v: run_queue(v).update(maxConcurrentRuns=None),
    "runs in local mode": lambda v: run_launcher(v).update(
        envVars=[e.replace("=prod", "=local") for e in run_launcher(v)["envVars"]]),
    "code location elsewhere": lambda v: code_location(v).update(dagsterApiGrpcArgs=["-m", "assets"]),
    "unknown secret": unknown_secret,
}


@pytest.mark.parametrize("case", sorted(BROKEN_DEPLOYMENT))
def test_broken_dagster_deployment_is_rejected(case):
    values = load_yaml(VALUES)
    BROKEN_DEPLOYMENT[case](values)
    assert dagster_errors(values, MANIFESTS)
