"""A loopback HTTP server that speaks enough of the Kubernetes API for a real kubectl.

It serves discovery (aggregated `/api` and `/apis`, and the legacy per-group-version documents)
from `aofd/specs/k8s_resources.json`, plus `metrics.k8s.io` for `kubectl top`; GET, LIST, WATCH,
DELETE, PATCH, PUT and POST on any built-in resource with plausible JSON bodies (a Pod with a
container, a node name, a Ready condition and a ReplicaSet owner; a Deployment with a selector
and a finished rollout; Nodes, Namespaces, ...); the `log`, `scale` and `eviction`
subresources; and `/version`.

Every kubectl run gets its own path prefix (`/r/<run>`, set as the kubeconfig's server URL), so
that runs in parallel have their own request log and their own state: an object deleted or
evicted in one run is gone (404) for the rest of that run only, which lets `delete` and `drain`
finish their waits at once. Every request other than discovery, `/version` and `/openapi` is
recorded as (method, path, query, body name).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import threading
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aofd.specs import k8s_tables

AGGREGATED = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
SERVER_VERSION = {"major": "1", "minor": "37", "gitVersion": "v1.37.1", "platform": "linux/amd64"}
METRICS_GROUP = "metrics.k8s.io"
_CREATED = "2026-01-01T00:00:00Z"


@dataclasses.dataclass(frozen=True)
class Recorded:
    """One API request as the server saw it (path without the run prefix)."""

    method: str
    path: str
    query: dict[str, list[str]]
    body_name: str | None


@dataclasses.dataclass
class _Run:
    requests: list[Recorded] = dataclasses.field(default_factory=list)
    gone: set[tuple[str, str, str]] = dataclasses.field(default_factory=set)  # (resource, ns, name)
    listed: set[tuple[str, str]] = dataclasses.field(default_factory=set)  # (resource, name)


@dataclasses.dataclass(frozen=True)
class _Type:
    group: str
    version: str
    name: str
    kind: str
    namespaced: bool
    subresources: tuple[str, ...]


def _types() -> list[_Type]:
    types = [
        _Type(r.group, v, r.name, r.kind, r.namespaced, r.subresources)
        for r in k8s_tables.all_resources()
        for v in r.versions
    ]
    types += [
        _Type(METRICS_GROUP, "v1beta1", "pods", "PodMetrics", True, ()),
        _Type(METRICS_GROUP, "v1beta1", "nodes", "NodeMetrics", False, ()),
    ]
    return types


class FakeApiServer:
    """Start with `with FakeApiServer() as server:`; `server.url(run)` is a run's server URL."""

    def __init__(self) -> None:
        self.types = _types()
        self._by_gvr = {(t.group, t.version, t.name): t for t in self.types}
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeApiServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def url(self, run: str) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host!s}:{port}/r/{run}"

    def requests(self, run: str) -> list[Recorded]:
        with self._lock:
            return list(self._run(run).requests)

    def listed(self, run: str) -> set[tuple[str, str]]:
        """(resource, name) of every object this run was served in a list."""
        with self._lock:
            return set(self._run(run).listed)

    def _run(self, run: str) -> _Run:
        return self._runs.setdefault(run, _Run())

    # discovery -----------------------------------------------------------------------------

    def _groups(self) -> Iterator[tuple[str, list[str]]]:
        order: dict[str, list[str]] = {}
        for t in self.types:
            versions = order.setdefault(t.group, [])
            if t.version not in versions:
                versions.append(t.version)
        yield from order.items()

    @functools.cache  # noqa: B019 - one server per test module, kept for its lifetime
    def discovery_body(self, what: str) -> bytes:
        """The discovery documents, serialized once: `core`, `apis`, `groups` or `group/version`."""
        if what in ("core", "apis"):
            return json.dumps(self.aggregated(core=what == "core")).encode()
        if what == "groups":
            return json.dumps(self.legacy_groups()).encode()
        group, _, version = what.rpartition("/")
        doc = self.legacy_resources(group, version)
        return json.dumps(doc).encode() if doc else b""

    def aggregated(self, core: bool) -> dict[str, Any]:
        items = []
        for group, versions in self._groups():
            if (group == "") != core:
                continue
            items.append(
                {
                    "metadata": {"name": group},
                    "versions": [
                        {
                            "version": v,
                            "freshness": "Current",
                            "resources": [
                                self._aggregated_resource(t)
                                for t in self.types
                                if t.group == group and t.version == v
                            ],
                        }
                        for v in versions
                    ],
                }
            )
        return {"apiVersion": "apidiscovery.k8s.io/v2", "kind": "APIGroupDiscoveryList", "items": items}

    def _aggregated_resource(self, t: _Type) -> dict[str, Any]:
        info = k8s_tables.resolve_resource(f"{t.name}.{t.version}.{t.group}") if t.group else None
        info = info or next(
            (r for r in k8s_tables.all_resources() if r.group == t.group and r.name == t.name), None
        )
        verbs = list(info.verbs) if info else ["get", "list"]
        return {
            "resource": t.name,
            "responseKind": {"group": "", "version": "", "kind": t.kind},
            "scope": "Namespaced" if t.namespaced else "Cluster",
            "singularResource": info.singular if info else t.kind.lower(),
            "shortNames": list(info.short_names) if info else [],
            "categories": list(info.categories) if info else [],
            "verbs": verbs,
            "subresources": [
                {
                    "subresource": s,
                    "responseKind": {"group": "", "version": "", "kind": t.kind},
                    "verbs": ["get"],
                }
                for s in t.subresources
            ],
        }

    def legacy_groups(self) -> dict[str, Any]:
        groups = []
        for group, versions in self._groups():
            if group == "":
                continue
            gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
            groups.append({"name": group, "versions": gvs, "preferredVersion": gvs[0]})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}

    def legacy_resources(self, group: str, version: str) -> dict[str, Any] | None:
        resources: list[dict[str, Any]] = []
        for t in self.types:
            if t.group != group or t.version != version:
                continue
            entry = self._aggregated_resource(t)
            resources.append(
                {
                    "name": t.name,
                    "singularName": entry["singularResource"],
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": entry["verbs"],
                    "shortNames": entry["shortNames"],
                }
            )
            for sub in t.subresources:
                sub_entry: dict[str, Any] = {
                    "name": f"{t.name}/{sub}",
                    "singularName": "",
                    "namespaced": t.namespaced,
                    "kind": t.kind,
                    "verbs": ["get", "create", "patch", "update"],
                }
                if sub == "eviction":
                    sub_entry.update(group="policy", version="v1", kind="Eviction", verbs=["create"])
                resources.append(sub_entry)
        if not resources:
            return None
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "groupVersion": gv, "resources": resources}

    # objects ---------------------------------------------------------------------------------

    def lookup(self, group: str, version: str, resource: str) -> _Type | None:
        return self._by_gvr.get((group, version, resource))

    def make_object(self, t: _Type, namespace: str | None, name: str) -> dict[str, Any]:
        api_version = f"{t.group}/{t.version}" if t.group else t.version
        meta: dict[str, Any] = {
            "name": name,
            "uid": f"uid-{t.name}-{name}",
            "resourceVersion": "7",
            "generation": 1,
            "creationTimestamp": _CREATED,
            "labels": {"app": name},
            "annotations": {"deployment.kubernetes.io/revision": "2"},
        }
        if t.namespaced and namespace:
            meta["namespace"] = namespace
        obj: dict[str, Any] = {"apiVersion": api_version, "kind": t.kind, "metadata": meta}
        template = {
            "metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
        }
        if t.kind == "Pod":
            meta["ownerReferences"] = [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": f"{name}-rs",
                    "uid": f"uid-rs-{name}",
                    "controller": True,
                }
            ]
            obj["spec"] = {"nodeName": "node-1", "containers": [{"name": "app", "image": "nginx:1"}]}
            obj["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "image": "nginx:1"}],
            }
        elif t.kind in ("Deployment", "ReplicaSet", "StatefulSet", "DaemonSet", "ReplicationController"):
            selector: dict[str, Any] = {"matchLabels": {"app": name}}
            if t.kind == "ReplicationController":
                selector = {"app": name}
            obj["spec"] = {"replicas": 1, "selector": selector, "template": template}
            obj["status"] = {
                "observedGeneration": 1,
                "replicas": 1,
                "updatedReplicas": 1,
                "readyReplicas": 1,
                "availableReplicas": 1,
                "currentReplicas": 1,
                "currentNumberScheduled": 1,
                "desiredNumberScheduled": 1,
                "updatedNumberScheduled": 1,
                "numberAvailable": 1,
                "numberReady": 1,
                "currentRevision": "r1",
                "updateRevision": "r1",
                "conditions": [
                    {"type": "Available", "status": "True"},
                    {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"},
                ],
            }
        elif t.kind in ("Job", "CronJob"):
            obj["spec"] = {
                "template": template,
                "schedule": "* * * * *",
                "jobTemplate": {"spec": {"template": template}},
            }
        elif t.kind == "Node":
            obj["spec"] = {}
            obj["status"] = {
                "conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "10.0.0.1"}],
                "nodeInfo": {"kubeletVersion": "v1.37.1"},
            }
        elif t.kind == "Service":
            obj["spec"] = {
                "selector": {"app": name},
                "ports": [{"port": 80, "protocol": "TCP"}],
                "clusterIP": "10.0.0.2",
            }
        elif t.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        elif t.kind in ("PodMetrics", "NodeMetrics"):
            obj["timestamp"] = _CREATED
            obj["window"] = "30s"
            usage = {"cpu": "1m", "memory": "1Mi"}
            if t.kind == "PodMetrics":
                obj["containers"] = [{"name": "app", "usage": usage}]
            else:
                obj["usage"] = usage
        return obj

    def make_list(
        self, t: _Type, namespace: str | None, query: dict[str, list[str]], run: _Run
    ) -> dict[str, Any]:
        field = query.get("fieldSelector", [""])[0]
        items: list[dict[str, Any]] = []
        if field.startswith("metadata.name="):
            name = field.split("=", 1)[1]
            if (t.name, namespace or "", name) not in run.gone:
                items.append(self.make_object(t, namespace, name))
        elif t.name not in ("events", "controllerrevisions"):
            # A list by `app=<owner>` (a deployment's pods or replica sets) answers with objects
            # of that owner: `logs deploy/x` finds a pod, `rollout undo` two revisions.
            labels = query.get("labelSelector", [""])[0]
            owner = labels.split("=", 1)[1] if labels.startswith("app=") and "," not in labels else None
            base = owner or {"pods": "web", "nodes": "node"}.get(t.name, t.name)
            count = 2 if t.name == "replicasets" else 1
            for index in range(1, count + 1):
                name = f"{base}-{index}"
                if (t.name, namespace or "", name) in run.gone:
                    continue
                item = self.make_object(t, namespace or ("team" if t.namespaced else None), name)
                if owner and t.name == "replicasets":
                    item["metadata"]["ownerReferences"] = [
                        {
                            "apiVersion": "apps/v1",
                            "kind": "Deployment",
                            "name": owner,
                            "uid": f"uid-deployments-{owner}",
                            "controller": True,
                        }
                    ]
                    item["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = str(index)
                    item["metadata"]["labels"]["pod-template-hash"] = f"h{index}"
                items.append(item)
        for item in items:
            run.listed.add((t.name, item["metadata"]["name"]))
        api_version = f"{t.group}/{t.version}" if t.group else t.version
        return {
            "apiVersion": api_version,
            "kind": f"{t.kind}List",
            "metadata": {"resourceVersion": "7"},
            "items": items,
        }


_PROTOBUF_MAGIC = b"k8s\x00"


def _proto_fields(data: bytes) -> dict[int, bytes]:
    """The length-delimited fields of one protobuf message (enough to find a name)."""
    fields: dict[int, bytes] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            varint()
        elif wire == 2:
            size = varint()
            fields.setdefault(number, data[i : i + size])
            i += size
        elif wire == 1:
            i += 8
        elif wire == 5:
            i += 4
        else:
            break
    return fields


def body_name(raw: bytes) -> str | None:
    """`metadata.name` of a JSON or Kubernetes-protobuf request body, if it has one.

    kubectl sends built-in objects as protobuf: the `k8s\\0` envelope's field 2 is the object,
    whose field 1 is its ObjectMeta, whose field 1 is the name.
    """
    if raw.startswith(_PROTOBUF_MAGIC):
        try:
            meta = _proto_fields(_proto_fields(_proto_fields(raw[4:]).get(2, b"")).get(1, b""))
            name = meta.get(1)
        except IndexError:
            return None
        return name.decode() if name else None
    try:
        found = (json.loads(raw).get("metadata") or {}).get("name")
    except (ValueError, AttributeError):
        return None
    return found if isinstance(found, str) else None


def _handler(server: FakeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # the test prints what matters
            return

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

        def do_PUT(self) -> None:
            self._handle("PUT")

        def do_PATCH(self) -> None:
            self._handle("PATCH")

        def do_DELETE(self) -> None:
            self._handle("DELETE")

        def _send(self, status: int, body: Any, content_type: str = "application/json") -> None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _status(self, code: int, reason: str, message: str) -> None:
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message}
            body.update(reason=reason, code=code)
            self._send(code, body)

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw_body = self.rfile.read(length) if length else b""
            parsed = urllib.parse.urlsplit(self.path)
            segments = [s for s in parsed.path.split("/") if s]
            if len(segments) < 2 or segments[0] != "r":
                self._status(404, "NotFound", "no run prefix")
                return
            run_id, rest = segments[1], segments[2:]
            query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
            if self._discovery(rest):
                return
            with server._lock:
                run = server._run(run_id)
                self._serve(method, rest, query, raw_body, run)

        def _discovery(self, rest: list[str]) -> bool:
            """Serve `/version`, `/openapi` and the discovery documents (not recorded)."""
            aggregated = "apidiscovery.k8s.io" in self.headers.get("Accept", "")
            if rest == ["version"]:
                self._send(200, SERVER_VERSION)
            elif rest[:1] == ["openapi"]:
                self._status(404, "NotFound", "the fake API server serves no OpenAPI")
            elif rest == ["api"] and aggregated:
                self._send(200, server.discovery_body("core"), AGGREGATED)
            elif rest == ["api"]:
                self._send(200, {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []})
            elif rest == ["apis"]:
                if aggregated:
                    self._send(200, server.discovery_body("apis"), AGGREGATED)
                else:
                    self._send(200, server.discovery_body("groups"))
            elif (rest[:1] == ["api"] and len(rest) == 2) or (rest[:1] == ["apis"] and len(rest) == 3):
                body = server.discovery_body("/".join(rest[1:]) if rest[0] == "apis" else f"/{rest[1]}")
                if body:
                    self._send(200, body)
                else:
                    self._status(404, "NotFound", "that group version is not served")
            elif rest[:1] == ["apis"] and len(rest) == 2:
                self._status(404, "NotFound", "group documents are not served")
            else:
                return False
            return True

        def _serve(
            self, method: str, rest: list[str], query: dict[str, list[str]], raw_body: bytes, run: _Run
        ) -> None:
            name = body_name(raw_body) if raw_body and method == "POST" else None
            run.requests.append(Recorded(method, "/" + "/".join(rest), query, name))
            self._object(method, rest, query, run, name)

        def _object(
            self,
            method: str,
            rest: list[str],
            query: dict[str, list[str]],
            run: _Run,
            created: str | None,
        ) -> None:
            if rest[:1] == ["api"]:
                group, version, tail = "", rest[1], rest[2:]
            elif rest[:1] == ["apis"] and len(rest) >= 3:
                group, version, tail = rest[1], rest[2], rest[3:]
            else:
                self._status(404, "NotFound", "unknown path")
                return
            namespace: str | None = None
            if len(tail) >= 3 and tail[0] == "namespaces":
                namespace, tail = tail[1], tail[2:]
            if not tail:
                self._status(404, "NotFound", "no resource")
                return
            t = server.lookup(group, version, tail[0])
            if t is None:
                self._status(404, "NotFound", f"the server could not find the requested resource {tail[0]}")
                return
            name = tail[1] if len(tail) > 1 else None
            sub = tail[2] if len(tail) > 2 else None
            if name is None:
                if method == "GET":
                    if query.get("watch", [""])[0] in ("true", "1"):
                        self._send(200, b"")
                    else:
                        self._send(200, server.make_list(t, namespace, query, run))
                elif method == "POST":
                    self._send(201, server.make_object(t, namespace, created or "generated-1"))
                elif method == "DELETE":
                    self._send(200, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
                else:
                    self._status(405, "MethodNotAllowed", "method not allowed on a collection")
                return
            key = (t.name, namespace or "", name)
            if key in run.gone:
                self._status(404, "NotFound", f'{t.name} "{name}" not found')
                return
            obj = server.make_object(t, namespace, name)
            if sub == "log":
                self._send(200, b"log line\n", "text/plain")
            elif sub == "scale":
                scale = {
                    "apiVersion": "autoscaling/v1",
                    "kind": "Scale",
                    "metadata": {"name": name, "namespace": namespace, "resourceVersion": "7"},
                    "spec": {"replicas": 1},
                    "status": {"replicas": 1, "selector": f"app={name}"},
                }
                self._send(200, scale)
            elif sub == "eviction":
                run.gone.add(key)
                self._send(201, {"kind": "Status", "apiVersion": "v1", "status": "Success"})
            elif sub == "token":
                body = {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenRequest",
                    "spec": {"audiences": []},
                    "status": {"token": "fake-token", "expirationTimestamp": "2030-01-01T00:00:00Z"},
                }
                self._send(201, body)
            elif method == "DELETE":
                run.gone.add(key)
                self._send(200, obj)
            elif method == "POST":
                self._send(201, obj)
            else:
                self._send(200, obj)

    return Handler
