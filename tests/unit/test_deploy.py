"""
Tests for deploy/: the Kubernetes manifests, the image's Dockerfile and the
systemd unit, checked offline.

Every manifest is validated against the Kubernetes JSON schemas that the
C{kubernetes-validate} package ships (strict: an unknown field is an error).
The command lines are parsed by the real parsers: twistd's C{ServerOptions}
for the image's ENTRYPOINT and the unit's ExecStart, which hands the rest to
the gateway's own L{edd_gateway.tap.Options}, so an unknown option or a bad
value fails here and not at a rollout.  Then the pieces are checked against
each other: the Service's ports are the listeners, the probes reach the
admin endpoint, every file an option names is mounted, the grace period
outlasts the drain, the routes ConfigMap loads.  Nothing here touches the
network or the clock.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
from functools import cache
from types import ModuleType
from typing import Any

import yaml
from twisted.python.usage import UsageError
from twisted.trial.unittest import SynchronousTestCase

from edd_gateway.issuance.sealing import generate_key_text
from edd_gateway.routes.loader import load_routes_file, load_routes_text
from edd_gateway.tap import Options
from edd_gateway.testing import require_module

REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(REPOSITORY, "deploy")
MANIFESTS = os.path.join(DEPLOY, "kubernetes")
ORIGINAL_CONFIGMAP = os.path.join(REPOSITORY, "tests", "fixtures", "original", "gateway-routes.configmap.yaml")

#: The schemas the manifests are validated against (bundled by kubernetes-validate).
KUBERNETES_VERSION = "1.29"
#: The image's ENTRYPOINT, exactly.
ENTRYPOINT = ["twistd", "--nodaemon", "--pidfile=", "--logger=edd_gateway.ops.logs.json_to_stdout", "edd-gateway"]
#: What the networking page says the gateway serves on its VIP.
VIP = "192.168.3.200"
PUBLIC_PORTS = {80, 443, 2222, *range(8000, 9000)}
#: Stands in for the Secret's value while the Deployment's args are parsed
#: (--nats and --compute-database need a database).
EXAMPLE_DATABASE_URL = "postgresql://edd_gateway:example@haproxy.default.svc.cluster.local:5432/gateway_db"
#: API groups whose schemas are not Kubernetes' own (checked by hand instead).
FOREIGN_GROUPS = ("cert-manager.io/",)


# --- reading the files ----------------------------------------------------------


def read(path: str) -> str:
    with open(path, encoding="utf-8") as file:
        return file.read()


@cache
def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(read(os.path.join(MANIFESTS, "kustomization.yaml")))
    return loaded


@cache
def manifests() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every document of every resource in kustomization.yaml, in order."""
    documents = []
    for name in kustomization()["resources"]:
        for document in yaml.safe_load_all(read(os.path.join(MANIFESTS, name))):
            if document is not None:
                documents.append((name, document))
    return tuple(documents)


def manifest(kind: str) -> dict[str, Any]:
    found = [document for _, document in manifests() if document["kind"] == kind]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} in the manifests, found {len(found)}")
    return found[0]


def pod_spec() -> dict[str, Any]:
    spec: dict[str, Any] = manifest("Deployment")["spec"]["template"]["spec"]
    return spec


def gateway_container() -> dict[str, Any]:
    containers = pod_spec()["containers"]
    if len(containers) != 1:
        raise AssertionError(f"expected the gateway's container alone, found {len(containers)}")
    container: dict[str, Any] = containers[0]
    return container


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of deploy/Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in read(os.path.join(DEPLOY, "Dockerfile")).splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        whole = pending + line
        pending = ""
        instruction, _, arguments = whole.strip().partition(" ")
        instructions.append((instruction.upper(), arguments.strip()))
    return instructions


def dockerfile_stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, split into stages at each FROM."""
    stages: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def exec_form(stage: list[tuple[str, str]], instruction: str) -> list[str]:
    """The last C{instruction} (ENTRYPOINT or CMD) of C{stage}, which must be in exec (JSON) form."""
    values = [arguments for name, arguments in stage if name == instruction]
    if not values:
        raise AssertionError(f"the final stage has no {instruction}")
    parsed = json.loads(values[-1])
    if not (isinstance(parsed, list) and all(isinstance(item, str) for item in parsed)):
        raise AssertionError(f"{instruction} is not in exec form: {values[-1]}")
    return parsed


def unit_file(path: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit file: section -> directive -> values, continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for line in read(path).splitlines():
        if not pending and (not line.strip() or line.lstrip()[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole, pending = (pending + line).strip(), ""
        if whole.startswith("[") and whole.endswith("]"):
            current = sections.setdefault(whole[1:-1], {})
            continue
        if current is None:
            raise AssertionError(f"{path}: directive outside a section: {whole}")
        key, _, value = whole.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def environment_file(path: str) -> dict[str, str]:
    """A systemd EnvironmentFile of KEY=VALUE lines (a value may be in double quotes)."""
    environment = {}
    for line in read(path).splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
        environment[key.strip()] = value
    return environment


def expand_exec(command: str, environment: dict[str, str]) -> list[str]:
    """
    An ExecStart line as systemd runs it: C{$NAME} alone is split at white
    space into words, C{${NAME}} is substituted within its word.
    """
    words: list[str] = []
    for word in shlex.split(command):
        whole = re.fullmatch(r"\$(\w+)", word)
        if whole:
            words.extend(environment[whole.group(1)].split())
            continue
        words.append(re.sub(r"\$\{(\w+)\}", lambda match: environment[match.group(1)], word))
    return words


def endpoint_port(description: str) -> int:
    """The port of a tcp: or tcp6: server endpoint string (tcp:80, tcp:9180:interface=...)."""
    parts = re.split(r"(?<!\\):", description)
    if parts[0] not in ("tcp", "tcp6"):
        raise AssertionError(f"not a TCP endpoint: {description}")
    for part in parts[1:]:
        if part.startswith("port="):
            return int(part[len("port="):])
    return int(parts[1])


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("edd_gateway_deploy_generate", os.path.join(DEPLOY, "generate.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class EnvironmentMixin:
    """Parses command lines with a known environment: DATABASE_URL set as the Deployment's Secret sets it."""

    def setUp(self) -> None:
        environ = dict(os.environ)
        environ["DATABASE_URL"] = EXAMPLE_DATABASE_URL
        self.patch(os, "environ", environ)  # type: ignore[attr-defined]
        # The parser opens the ACME storage key: a real key stands in for
        # the one the pod mounts from its secret.
        self.storage_key = self.mktemp()  # type: ignore[attr-defined]
        with open(self.storage_key, "w") as file:
            file.write(generate_key_text())

    def in_this_test(self, argv: list[str]) -> list[str]:
        return [argument.replace(POD_STORAGE_KEY, self.storage_key) for argument in argv]

    def gatewayOptions(self, argv: list[str]) -> Options:
        options = Options()
        options.parseOptions(self.in_this_test(argv))
        return options

    def twistdOptions(self, argv: list[str]) -> Any:
        """twistd's own parser for C{argv} (its options, then the edd-gateway plugin and the plugin's options)."""
        from twisted.scripts.twistd import ServerOptions

        config = ServerOptions()
        config.parseOptions(self.in_this_test(argv))
        return config


#: Where the Deployment mounts the edd-gateway-acme secret's key.
POD_STORAGE_KEY = "/etc/edd-gateway/acme/storage-key"


def deployment_args() -> list[str]:
    args: list[str] = gateway_container()["args"]
    return args


# --- the manifests against the Kubernetes schemas ---------------------------------


class SchemaTests(SynchronousTestCase):
    def setUp(self) -> None:
        require_module("kubernetes_validate")

    def test_every_manifest_is_valid(self) -> None:
        """Each document of each resource passes its kind's strict schema, from the bundled schemas."""
        import kubernetes_validate

        checked = []
        for name, document in manifests():
            if document["apiVersion"].startswith(FOREIGN_GROUPS):
                continue
            try:
                kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as problem:
                self.fail(f"{name}: {document['kind']} {document['metadata']['name']}: "
                          f"{'.'.join(map(str, problem.path))}: {problem.message}")
            checked.append(document["kind"])
        self.assertEqual(sorted(checked),
                         ["ConfigMap", "Deployment", "Namespace", "PodDisruptionBudget", "Service", "ServiceAccount"])

    def test_validator_rejects_a_misspelled_field(self) -> None:
        """The strict schemas are really in use: a typo in the Deployment is an error."""
        import kubernetes_validate

        broken = json.loads(json.dumps(manifest("Deployment")))
        broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"port": 9180}}
        self.assertRaises(kubernetes_validate.ValidationError, kubernetes_validate.validate,
                          broken, KUBERNETES_VERSION, strict=True)


class ManifestTests(SynchronousTestCase):
    def test_certificate(self) -> None:
        """cert-manager's Certificate has no bundled schema: its shape is checked here."""
        certificate = manifest("Certificate")
        self.assertEqual(certificate["apiVersion"], "cert-manager.io/v1")
        self.assertEqual(sorted(certificate["spec"]),
                         ["dnsNames", "issuerRef", "secretName"])
        self.assertEqual(certificate["spec"]["issuerRef"], {"name": "letsencrypt-cloudflare", "kind": "ClusterIssuer"})
        self.assertIn("*.cloud.eddisonso.com", certificate["spec"]["dnsNames"])

    def test_kustomization_lists_every_manifest(self) -> None:
        """No manifest in deploy/kubernetes is left out of kubectl apply -k."""
        on_disk = {name for name in os.listdir(MANIFESTS)
                   if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml"}
        self.assertEqual(sorted(kustomization()["resources"]), sorted(on_disk))

    def test_namespace(self) -> None:
        """Everything is in the namespace core, which is created first."""
        self.assertEqual(manifests()[0][1], {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "core"}})
        for name, document in manifests()[1:]:
            self.assertEqual(document["metadata"].get("namespace"), "core", name)

    def test_no_kubernetes_api_access(self) -> None:
        """A ServiceAccount without a token, used by the pod, and no RBAC at all."""
        kinds = {document["kind"] for _, document in manifests()}
        self.assertFalse(kinds & {"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"}, kinds)
        account = manifest("ServiceAccount")
        self.assertIs(account["automountServiceAccountToken"], False)
        self.assertEqual(pod_spec()["serviceAccountName"], account["metadata"]["name"])
        self.assertIs(pod_spec()["automountServiceAccountToken"], False)

    def test_replicas_spread_over_nodes(self) -> None:
        deployment = manifest("Deployment")
        self.assertEqual(deployment["spec"]["replicas"], 2)
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(deployment["spec"]["selector"]["matchLabels"].items() - labels.items(), set())
        terms = pod_spec()["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        self.assertEqual([term["topologyKey"] for term in terms], ["kubernetes.io/hostname"])
        self.assertEqual(terms[0]["labelSelector"]["matchLabels"].items() - labels.items(), set())

    def test_disruption_budget(self) -> None:
        budget = manifest("PodDisruptionBudget")
        self.assertEqual(budget["spec"]["minAvailable"], 1)
        self.assertEqual(budget["spec"]["selector"]["matchLabels"],
                         manifest("Deployment")["spec"]["selector"]["matchLabels"])

    def test_security_context(self) -> None:
        """Non-root with a fixed uid, read-only, no privilege escalation, NET_BIND_SERVICE alone, seccomp."""
        pod, container = pod_spec()["securityContext"], gateway_container()["securityContext"]
        self.assertIs(pod["runAsNonRoot"], True)
        self.assertIs(container["runAsNonRoot"], True)
        self.assertGreater(container["runAsUser"], 0)
        self.assertEqual((pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]),
                         (container["runAsUser"], container["runAsGroup"], container["runAsGroup"]))
        self.assertIs(container["readOnlyRootFilesystem"], True)
        self.assertIs(container["allowPrivilegeEscalation"], False)
        self.assertEqual(container["capabilities"], {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]})
        self.assertEqual(pod["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertEqual(container["seccompProfile"], {"type": "RuntimeDefault"})
        self.assertNotIn("privileged", container)
        self.assertFalse(pod_spec().get("hostNetwork", False))

    def test_resources(self) -> None:
        resources = gateway_container()["resources"]
        self.assertEqual(sorted(resources["requests"]), ["cpu", "memory"])
        self.assertEqual(sorted(resources["limits"]), ["cpu", "memory"])

    def test_database_from_a_secret(self) -> None:
        """DATABASE_URL (and the compute database's password) come from a Secret, never a literal."""
        env = {variable["name"]: variable for variable in gateway_container()["env"]}
        for name in ("DATABASE_URL", "PGPASSWORD"):
            self.assertNotIn("value", env[name], name)
            self.assertEqual(env[name]["valueFrom"]["secretKeyRef"]["name"], "edd-gateway-database", name)

    def test_no_secret_on_the_command_line(self) -> None:
        """No password in the args: they are visible in the pod spec and in ps on the node."""
        for argument in deployment_args():
            self.assertIsNone(re.search(r"://[^/@\s]*:[^/@\s]*@|password\s*=", argument, re.IGNORECASE), argument)
            self.assertNotIn("$(", argument)

    def test_service(self) -> None:
        """A LoadBalancer on the seed's VIP that keeps client addresses and reaches the gateway's pods."""
        service = manifest("Service")
        self.assertEqual(service["spec"]["type"], "LoadBalancer")
        self.assertEqual(service["spec"]["externalTrafficPolicy"], "Local")
        self.assertIs(service["spec"]["allocateLoadBalancerNodePorts"], False)
        self.assertEqual(service["metadata"]["annotations"]["metallb.universe.tf/loadBalancerIPs"], VIP)
        labels = manifest("Deployment")["spec"]["template"]["metadata"]["labels"]
        self.assertEqual(service["spec"]["selector"].items() - labels.items(), set())
        names = [port["name"] for port in service["spec"]["ports"]]
        self.assertEqual(len(names), len(set(names)))
        self.assertTrue(all(len(name) <= 15 for name in names))


class GeneratedServiceTests(SynchronousTestCase):
    def test_committed_service_is_the_generator_output(self) -> None:
        """deploy/kubernetes/service.yaml is exactly what deploy/generate.py writes."""
        generator = load_generator()
        self.assertEqual(os.path.abspath(generator.OUTPUT), os.path.join(MANIFESTS, "service.yaml"))
        self.assertEqual(read(os.path.join(MANIFESTS, "service.yaml")), generator.service_manifest())

    def test_generator_ports(self) -> None:
        """The generator's ports are the public ones, each once."""
        ports = [port for _, port in load_generator().ports()]
        self.assertEqual(len(ports), len(PUBLIC_PORTS))
        self.assertEqual(set(ports), PUBLIC_PORTS)

    def test_check_mode(self) -> None:
        """--check succeeds on the committed file."""
        self.assertEqual(load_generator().main(["--check"]), 0)


# --- the command lines, parsed by the real parsers ----------------------------------


class ImageCommandLineTests(EnvironmentMixin, SynchronousTestCase):
    def test_entrypoint(self) -> None:
        self.assertEqual(exec_form(dockerfile_stages()[-1], "ENTRYPOINT"), ENTRYPOINT)

    def test_entrypoint_and_deployment_args(self) -> None:
        """twistd accepts the ENTRYPOINT + the Deployment's args, and hands the args to the gateway's Options."""
        config = self.twistdOptions(ENTRYPOINT[1:] + deployment_args())
        self.assertEqual(config.subCommand, "edd-gateway")
        self.assertIsInstance(config.subOptions, Options)
        self.assertTrue(config["nodaemon"])
        self.assertEqual(config["pidfile"], "")

    def test_logger_is_importable(self) -> None:
        """--logger names a callable that makes a log observer."""
        config = self.twistdOptions(ENTRYPOINT[1:] + deployment_args())
        self.assertTrue(callable(config["logger"]), config["logger"])
        self.assertTrue(callable(config["logger"]()))

    def test_deployment_args(self) -> None:
        """The gateway's own parser takes the args: no unknown option, no bad value."""
        options = self.gatewayOptions(deployment_args())
        self.assertEqual(options["database"], EXAMPLE_DATABASE_URL)
        self.assertEqual(options["sniff-default"], "ssh")
        self.assertEqual(options["container-ports"], range(8000, 9000))

    def test_default_cmd(self) -> None:
        """The image's CMD (for docker run) is a valid command line too."""
        config = self.twistdOptions(ENTRYPOINT[1:] + exec_form(dockerfile_stages()[-1], "CMD"))
        self.assertEqual(config.subCommand, "edd-gateway")

    def test_parser_rejects_unknown_options(self) -> None:
        """The check above can fail: a misspelled option is refused."""
        self.assertRaises(UsageError, self.twistdOptions, ENTRYPOINT[1:] + ["--listne=tcp:80"])
        self.assertRaises(UsageError, self.gatewayOptions, ["--container-ports=9000-8000"])


class ConsistencyTests(EnvironmentMixin, SynchronousTestCase):
    """The manifests agree with the options the gateway is given."""

    def options(self) -> Options:
        return self.gatewayOptions(deployment_args())

    def container_port(self, port: int | str) -> int:
        if isinstance(port, int):
            return port
        named = {entry["name"]: entry["containerPort"] for entry in gateway_container()["ports"]}
        return named[port]

    def test_probes_reach_the_admin_endpoint(self) -> None:
        admin = endpoint_port(self.options()["admin"])
        container = gateway_container()
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz", "readinessProbe": "/readyz"}
        for probe, path in expected.items():
            get = container[probe]["httpGet"]
            self.assertEqual((get["path"], self.container_port(get["port"])), (path, admin), probe)
        self.assertNotIn("interface=127.0.0.1", self.options()["admin"])

    def test_prometheus_annotations(self) -> None:
        annotations = manifest("Deployment")["spec"]["template"]["metadata"]["annotations"]
        self.assertEqual(annotations["prometheus.io/scrape"], "true")
        self.assertEqual(int(annotations["prometheus.io/port"]), endpoint_port(self.options()["admin"]))
        self.assertEqual(annotations["prometheus.io/path"], "/metrics")

    def test_service_ports_are_the_listeners(self) -> None:
        """The Service exposes exactly what the gateway listens on, and not the admin port."""
        options = self.options()
        listeners = [endpoint_port(endpoint) for endpoint in options["listen"] + options["ssh-listen"]]
        listeners += list(options["container-ports"])
        self.assertEqual(len(listeners), len(set(listeners)))
        self.assertEqual(set(listeners), PUBLIC_PORTS)
        ports = manifest("Service")["spec"]["ports"]
        self.assertEqual([port["port"] for port in ports], [port["targetPort"] for port in ports])
        self.assertEqual(sorted(port["port"] for port in ports), sorted(listeners))
        self.assertNotIn(endpoint_port(options["admin"]), {port["port"] for port in ports})
        # The container listeners must be reachable from outside the pod.
        self.assertEqual(options["container-interface"], "0.0.0.0")

    def test_ssh_on_2222(self) -> None:
        """2222 is a dedicated SSH listener; the sniffing ones fall back to SSH for silent clients."""
        options = self.options()
        self.assertEqual([endpoint_port(endpoint) for endpoint in options["ssh-listen"]], [2222])
        self.assertEqual(sorted(endpoint_port(endpoint) for endpoint in options["listen"]), [80, 443])

    def mounted(self, path: str) -> tuple[dict[str, Any], str]:
        """The volume C{path} lies in, and C{path} relative to the mount; fails when nothing is mounted there."""
        volumes = {volume["name"]: volume for volume in pod_spec()["volumes"]}
        for mount in gateway_container()["volumeMounts"]:
            root = mount["mountPath"].rstrip("/")
            if path == root or path.startswith(root + "/"):
                self.assertIs(mount.get("readOnly"), True, root)
                return volumes[mount["name"]], os.path.relpath(path, root)
        self.fail(f"{path} is not in any volume mount")

    def assertProjected(self, volume: dict[str, Any], relative: str) -> None:
        source = volume.get("configMap") or volume["secret"]
        self.assertIn(relative, [item["path"] for item in source["items"]], volume["name"])

    def test_routes_file_is_mounted(self) -> None:
        """--routes is routes.yaml of the gateway-routes ConfigMap, mounted as a directory."""
        volume, relative = self.mounted(self.options()["routes"])
        self.assertEqual(relative, "routes.yaml")
        self.assertProjected(volume, relative)
        self.assertEqual(volume["configMap"]["name"], manifest("ConfigMap")["metadata"]["name"])
        self.assertIn("routes.yaml", manifest("ConfigMap")["data"])
        self.assertNotIn("subPath", json.dumps(gateway_container()["volumeMounts"]))

    def test_tls_dir_is_the_certificate_secret(self) -> None:
        """--tls-dir is where the Certificate's kubernetes.io/tls Secret is mounted."""
        [tls_dir] = self.options()["tls-dir"]
        volume, relative = self.mounted(tls_dir)
        self.assertEqual(relative, ".")
        self.assertEqual(volume["secret"]["secretName"], manifest("Certificate")["spec"]["secretName"])
        self.assertEqual(volume["secret"]["defaultMode"], 0o440)

    def test_ssh_keys_are_mounted(self) -> None:
        options = self.options()
        for option in ("ssh-host-key", "ssh-client-key"):
            volume, relative = self.mounted(options[option])
            self.assertIn("secret", volume, option)
            self.assertProjected(volume, relative)
            self.assertEqual(volume["secret"]["defaultMode"], 0o440, option)

    def test_acme_storage_key_is_mounted(self) -> None:
        """Custom domains are on, with the sealing key from a secret both replicas mount."""
        options = self.options()
        self.assertTrue(options["acme-directory"].startswith("https://"))
        self.assertIn(f"--acme-storage-key={POD_STORAGE_KEY}", deployment_args())
        volume, relative = self.mounted(POD_STORAGE_KEY)
        self.assertEqual(volume["secret"]["secretName"], "edd-gateway-acme")
        self.assertProjected(volume, relative)
        self.assertEqual(volume["secret"]["defaultMode"], 0o440)

    def test_grace_period_outlasts_the_drain(self) -> None:
        """SIGKILL comes after preStop and the whole drain timeout."""
        drain = self.options()["drain-timeout"]
        self.assertEqual(drain, 30)
        pre_stop = gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
        self.assertEqual(pre_stop[0], "sleep")
        self.assertGreater(pod_spec()["terminationGracePeriodSeconds"], drain + float(pre_stop[1]))

    def test_routes_configmap_loads(self) -> None:
        """The ConfigMap's routes.yaml loads with the gateway's loader: the original routes, all 28."""
        path = os.path.join(MANIFESTS, "gateway-routes.yaml")
        routes = load_routes_text(read(path), path)
        self.assertEqual(len(routes), 28)
        original = load_routes_file(ORIGINAL_CONFIGMAP)
        self.assertEqual([dataclasses.replace(route, source="") for route in routes],
                         [dataclasses.replace(route, source="") for route in original])
        # The key the pod mounts holds the same routes on its own, as the gateway reads it there.
        alone = load_routes_text(manifest("ConfigMap")["data"]["routes.yaml"], "routes.yaml")
        self.assertEqual(len(alone), 28)


# --- the image ------------------------------------------------------------------------


class DockerfileTests(SynchronousTestCase):
    def test_multi_stage_from_python_slim(self) -> None:
        stages = dockerfile_stages()
        self.assertGreaterEqual(len(stages), 2)
        for stage in stages:
            self.assertEqual(stage[0][1].split()[0], "python:3.11-slim")

    def test_user_is_the_manifest_uid(self) -> None:
        users = [arguments for name, arguments in dockerfile_stages()[-1] if name == "USER"]
        uid, _, gid = users[-1].partition(":")
        container = gateway_container()["securityContext"]
        self.assertEqual((int(uid), int(gid)), (container["runAsUser"], container["runAsGroup"]))

    def test_capability_set_with_build_stage_tools(self) -> None:
        """setcap comes from the build stage: libcap2-bin is never installed in the runtime image."""
        build, runtime = dockerfile_stages()[0], dockerfile_stages()[-1]
        self.assertTrue(any("libcap2-bin" in arguments for name, arguments in build if name == "RUN"))
        self.assertFalse(any("libcap2-bin" in arguments for _, arguments in runtime))
        self.assertTrue(any("cap_net_bind_service=+ep" in arguments for name, arguments in runtime if name == "RUN"))

    def test_dockerignore_keeps_what_pip_needs(self) -> None:
        ignored = {line.strip() for line in read(os.path.join(REPOSITORY, ".dockerignore")).splitlines()
                   if line.strip() and not line.startswith("#")}
        self.assertIn(".git", ignored)
        self.assertFalse(ignored & {"edd_gateway", "twisted", "setup.cfg", "pyproject.toml", "README.md"})


# --- the systemd unit -------------------------------------------------------------------


class SystemdUnitTests(EnvironmentMixin, SynchronousTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.unit = unit_file(os.path.join(DEPLOY, "edd-gateway.service"))
        self.service = self.unit["Service"]
        self.environment = environment_file(os.path.join(DEPLOY, "edd-gateway.env"))

    def directive(self, name: str) -> str:
        values = self.service.get(name)
        if not values:
            self.fail(f"the unit has no {name}=")
        return values[-1]

    def exec_start(self) -> list[str]:
        return expand_exec(self.directive("ExecStart"), self.environment)

    def test_exec_start_is_the_image_command(self) -> None:
        """The same twistd command as the image's ENTRYPOINT, run from the unit's virtual environment."""
        argv = self.exec_start()
        self.assertTrue(argv[0].endswith("/bin/twistd"), argv[0])
        self.assertEqual(argv[1:len(ENTRYPOINT)], ENTRYPOINT[1:])

    def test_exec_start_parses(self) -> None:
        """twistd and the gateway accept ExecStart with the example environment file."""
        argv = self.exec_start()
        config = self.twistdOptions(argv[1:])
        self.assertEqual(config.subCommand, "edd-gateway")
        self.assertTrue(callable(config["logger"]))
        options = self.gatewayOptions(argv[len(ENTRYPOINT):])
        self.assertEqual(sorted(endpoint_port(endpoint) for endpoint in options["listen"]), [80, 443])
        self.assertEqual(options["container-ports"], range(8000, 9000))

    def test_state_in_the_state_directory(self) -> None:
        """What the gateway writes (keys, pins, development certificate) is under StateDirectory=."""
        state = "/var/lib/" + self.directive("StateDirectory")
        options = self.gatewayOptions(self.exec_start()[len(ENTRYPOINT):])
        for name in ("ssh-host-key", "ssh-client-key", "state-file", "dev-cert-dir"):
            self.assertTrue(options[name].startswith(state + "/"), name)
        self.assertEqual(self.directive("WorkingDirectory"), state)

    def test_stop_outlasts_the_drain(self) -> None:
        options = self.gatewayOptions(self.exec_start()[len(ENTRYPOINT):])
        self.assertEqual(self.directive("KillSignal"), "SIGTERM")
        self.assertGreater(float(self.directive("TimeoutStopSec")), options["drain-timeout"])

    def test_reload_and_restart(self) -> None:
        self.assertEqual(self.directive("ExecReload"), "/bin/kill -HUP $MAINPID")
        self.assertEqual(self.directive("Restart"), "on-failure")
        self.assertEqual(self.directive("EnvironmentFile"), "/etc/edd-gateway/edd-gateway.env")

    def test_capabilities(self) -> None:
        self.assertEqual(self.directive("AmbientCapabilities"), "CAP_NET_BIND_SERVICE")
        self.assertEqual(self.directive("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE")
        self.assertTrue(self.service.get("DynamicUser") == ["yes"] or self.directive("User") not in ("", "root"))

    def test_hardening(self) -> None:
        expected = {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes", "PrivateTmp": "yes",
                    "PrivateDevices": "yes", "RestrictNamespaces": "yes", "LockPersonality": "yes"}
        self.assertEqual({name: self.directive(name) for name in expected}, expected)
        self.assertEqual(set(self.directive("RestrictAddressFamilies").split()), {"AF_INET", "AF_INET6", "AF_UNIX"})
        self.assertEqual(self.unit["Install"]["WantedBy"], ["multi-user.target"])

    def test_expansion(self) -> None:
        """The ExecStart expansion used above splits $NAME into words and substitutes ${NAME} in place."""
        self.assertEqual(expand_exec("a $X --b=${Y} '${Y} c'", {"X": "1  2", "Y": "v"}),
                         ["a", "1", "2", "--b=v", "v c"])
