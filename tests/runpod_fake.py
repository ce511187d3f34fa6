"""A local RunPod REST v2 server built from RunPod's published OpenAPI document.

Every request is matched to an operation of the document (method and path template),
checked for the bearer token the document's security scheme asks for, and its JSON body is
validated against the operation's request schema with a JSON Schema 2020-12 validator (the
document is OpenAPI 3.1, whose schemas are 2020-12). An invalid body is answered 422 with the
validator's messages in ``errors``, as RunPod does. Answers are built from the document's own
examples (the created pod, the problem bodies) and are themselves validated against the
operation's response schema, so the fake cannot drift from the contract unnoticed.

Tests script answers per operation (``server.script("createPod", 400, 201)``) to exercise
the create table (400/403 next GPU, 402 stop, 422, 429 with ``Retry-After``, 5xx), and move
pods between statuses (``server.set_status``).
"""

from __future__ import annotations

import copy
import json
import re
import secrets
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

DOCUMENT = Path(__file__).with_name("runpod") / "openapi-v2.json"
"""A byte-for-byte copy of shared/runpod/openapi-v2.json (a test checks they agree)."""
SHARED_DOCUMENT = Path(__file__).resolve().parents[2] / "shared" / "runpod" / "openapi-v2.json"
BASE_URI = "urn:runpod:openapi-v2"

# From the podAction description: which actions each status allows, and where they lead.
ALLOWED_ACTIONS = {
    "PROVISIONING": ("stop", "terminate"),
    "STARTING": ("stop", "terminate"),
    "RUNNING": ("stop", "restart", "terminate"),
    "EXITED": ("start", "terminate"),
    "ERROR": ("start", "terminate"),
    "TERMINATED": (),
}
ACTION_LEADS_TO = {"stop": "EXITED", "start": "RUNNING", "restart": "RUNNING"}


class Contract:
    """The OpenAPI document, with JSON Schema 2020-12 validation of its parts."""

    def __init__(self, path: Path = DOCUMENT) -> None:
        self.document = json.loads(path.read_text(encoding="utf-8"))
        resource = Resource.from_contents(self.document, default_specification=DRAFT202012)
        self.registry = Registry().with_resource(BASE_URI, resource)
        self._routes = sorted(
            (_route(template), template) for template in self.document["paths"]
        )  # literal segments sort before templates, so /x/delegations wins over /x/{id}

    def errors(self, pointer: str, instance: Any) -> list[str]:
        """Validate ``instance`` against the schema at ``pointer`` (``#/components/...``).

        Returns:
            One message per violation, as ``<json path>: <message>``; empty when valid.
        """
        validator = Draft202012Validator({"$ref": BASE_URI + pointer}, registry=self.registry)
        found = sorted(validator.iter_errors(instance), key=lambda e: list(e.absolute_path))
        return [f"{error.json_path}: {error.message}" for error in found]

    def schema_errors(self, name: str, instance: Any) -> list[str]:
        """Validate ``instance`` against ``components.schemas[name]``."""
        return self.errors(f"#/components/schemas/{name}", instance)

    def enum(self, name: str) -> list[str]:
        """Return the ``enum`` of ``components.schemas[name]``."""
        return list(self.document["components"]["schemas"][name]["enum"])

    def operation(self, method: str, path: str) -> tuple[str, str, dict[str, str]] | None:
        """Return ``(template, operationId, path params)`` for a request, or None."""
        for (_, pattern), template in self._routes:
            match = re.fullmatch(pattern, path)
            operation = self.document["paths"][template].get(method.lower())
            if match and operation:
                return template, operation["operationId"], match.groupdict()
        return None

    def request_pointer(self, template: str, method: str) -> str | None:
        """Return the pointer of the operation's JSON request body schema, if it has one."""
        body = self.document["paths"][template][method.lower()].get("requestBody")
        if not body or "application/json" not in body.get("content", {}):
            return None
        operation = f"#/paths/{_escape(template)}/{method.lower()}"
        return f"{operation}/requestBody/content/application~1json/schema"

    def response(self, template: str, method: str, status: int) -> tuple[str, dict] | None:
        """Return ``(pointer, response object)`` documented for ``status`` (or ``default``)."""
        responses = self.document["paths"][template][method.lower()]["responses"]
        key = str(status) if str(status) in responses else "default"
        if key not in responses:
            return None
        response = responses[key]
        pointer = f"#/paths/{_escape(template)}/{method.lower()}/responses/{key}"
        if "$ref" in response:
            pointer = response["$ref"]
            response = self.resolve(pointer)
        return pointer, response

    def resolve(self, pointer: str) -> Any:
        """Return the part of the document at ``pointer``."""
        node: Any = self.document
        for part in pointer.removeprefix("#/").split("/"):
            node = node[part.replace("~1", "/").replace("~0", "~")]
        return node

    def example(self, pointer: str, content_type: str) -> Any:
        """Return the first example of a response's ``content_type``, or None."""
        content = self.resolve(pointer).get("content", {}).get(content_type, {})
        examples = content.get("examples") or {}
        first = next(iter(examples.values()), None)
        return copy.deepcopy(first["value"]) if first else None


@dataclass
class Answer:
    """A scripted answer: a status, and for 429 a ``Retry-After``; ``drop`` hangs up instead
    (after doing the work), as a connection lost on the way back would."""

    status: int = 200
    retry_after_s: int | None = None
    detail: str | None = None
    errors: list[str] | None = None
    drop: bool = False


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    operation: str | None
    headers: dict[str, str]
    body: Any
    errors: list[str] = field(default_factory=list)
    status: int = 0


class FakeRunPod:
    """The server; ``url`` is the API base including ``/v2`` (what the client is given)."""

    def __init__(self, contract: Contract | None = None) -> None:
        self.contract = contract or Contract()
        self.requests: list[Recorded] = []
        self.pods: dict[str, dict[str, Any]] = {}
        self.answer_errors: list[str] = []  # answers the fake built against the contract
        self._scripts: dict[str, list[Answer]] = defaultdict(list)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        """The API base: ``http://127.0.0.1:<port>/v2``."""
        return f"http://127.0.0.1:{self._server.server_port}/v2"

    def start(self) -> FakeRunPod:
        """Start serving on a free port."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        self._server.shutdown()
        self._server.server_close()

    def script(self, operation_id: str, *answers: int | Answer) -> None:
        """Answer the next calls of ``operation_id`` with ``answers`` (then normally)."""
        self._scripts[operation_id].extend(
            a if isinstance(a, Answer) else Answer(status=a) for a in answers
        )

    def set_status(self, pod_id: str, status: str) -> None:
        """Move a pod to ``status`` (as RunPod would when the container exits, say)."""
        assert status in self.contract.enum("PodStatus"), status
        with self._lock:
            self.pods[pod_id]["status"] = status
            self.pods[pod_id]["actions"] = list(ALLOWED_ACTIONS[status])

    def calls(self, operation_id: str) -> list[Recorded]:
        """The requests of one operation, in order."""
        return [r for r in self.requests if r.operation == operation_id]

    def invalid(self) -> list[Recorded]:
        """The requests whose body the contract refused."""
        return [r for r in self.requests if r.errors]

    # -- handling ------------------------------------------------------------------------

    def handle(self, method: str, path: str, headers: dict[str, str], raw: bytes) -> tuple:
        """Return ``(status, headers, body or None, drop)`` for one request."""
        path = path.split("?", 1)[0]
        found = self.contract.operation(method, path)
        body = _json(raw)
        record = Recorded(method, path, found[1] if found else None, headers, body)
        with self._lock:
            self.requests.append(record)
        answer = self._answer(record, found, headers, body)
        record.status = answer[0]
        return answer

    def _answer(self, record: Recorded, found: Any, headers: dict[str, str], body: Any) -> tuple:
        if found is None:
            return self._problem(None, method="", status=404, detail=f"no route {record.path}")
        template, operation_id, params = found
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not token.strip():  # the document's bearerAuth scheme
            return self._problem(template, record.method, 401, "missing bearer token")
        pointer = self.contract.request_pointer(template, record.method)
        if pointer is not None:
            record.errors = (
                self.contract.errors(pointer, body) if body is not None else ["$: no JSON body"]
            )
            if record.errors:
                return self._problem(
                    template, record.method, 422, "Request validation failed.", record.errors
                )
        scripted = self._next_scripted(operation_id)
        if scripted is not None and not scripted.drop:
            return self._scripted(template, record.method, scripted, body, headers)
        status, answer = getattr(self, f"_op_{operation_id}")(params, body)
        result = self._respond(template, record.method, status, answer)
        return (*result[:3], bool(scripted and scripted.drop))

    def _next_scripted(self, operation_id: str) -> Answer | None:
        with self._lock:
            queue = self._scripts.get(operation_id)
            return queue.pop(0) if queue else None

    def _scripted(self, template: str, method: str, answer: Answer, body: Any, headers) -> tuple:
        detail = answer.detail
        if detail is not None:  # lets a test make RunPod echo what it was sent
            detail = detail.format(body=json.dumps(body), authorization=headers["authorization"])
        result = self._problem(template, method, answer.status, detail, answer.errors)
        if answer.retry_after_s is not None:
            result[1]["Retry-After"] = str(answer.retry_after_s)
        return result

    def _problem(
        self, template: str | None, method: str, status: int, detail: str | None = None,
        errors: list[str] | None = None,
    ) -> tuple:  # fmt: skip
        problem = None
        if template is not None:
            documented = self.contract.response(template, method, status)
            if documented and documented[0].startswith("#/components/responses/"):
                problem = self.contract.example(documented[0], "application/problem+json")
        problem = problem or {"title": HTTPStatus(status).phrase, "status": status, "detail": ""}
        problem["status"] = status
        if detail is not None:
            problem["detail"] = detail
        problem["detail"] = problem["detail"] or HTTPStatus(status).description
        if errors:
            problem["errors"] = errors
        if template is not None:
            self._check_answer(template, method, status, "application/problem+json", problem)
        headers = {"Content-Type": "application/problem+json"}
        return status, headers, json.dumps(problem).encode(), False

    def _respond(self, template: str, method: str, status: int, answer: Any) -> tuple:
        if status >= 400:
            return self._problem(template, method, status, answer)
        if answer is None:
            return status, {}, None, False
        self._check_answer(template, method, status, "application/json", answer)
        return status, {"Content-Type": "application/json"}, json.dumps(answer).encode(), False

    def _check_answer(self, template: str, method: str, status: int, kind: str, body: Any) -> None:
        documented = self.contract.response(template, method, status)
        schema = (documented[1].get("content") or {}).get(kind) if documented else None
        if schema is None:
            self.answer_errors.append(f"{method} {template} {status}: no {kind} documented")
            return
        pointer = f"{documented[0]}/content/{kind.replace('/', '~1')}/schema"
        for error in self.contract.errors(pointer, body):
            self.answer_errors.append(f"{method} {template} {status}: {error}")

    # -- operations (the pod endpoints the pipeline uses) -------------------------------------

    def _op_createPod(self, params: dict, body: dict) -> tuple[int, Any]:
        pod = self.contract.example(
            "#/paths/~1v2~1pods/post/responses/201", "application/json"
        )  # the document's created pod, made ours
        pod |= {
            "id": secrets.token_hex(5),
            "name": body["name"],
            "image": body["image"],
            "args": body.get("args", ""),
            "disk": body.get("disk", pod["disk"]),
            "env": body.get("env", {}),
            "ports": body.get("ports", []),
            "mounts": body.get("mounts", {}),
            "gpu": {"id": body["gpu"]["id"], "count": body["gpu"].get("count", 1)},
            "cloud": body.get("cloud", "SECURE"),
            "template": None,
            "status": "PROVISIONING",
            "actions": list(ALLOWED_ACTIONS["PROVISIONING"]),
            "createdAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with self._lock:
            self.pods[pod["id"]] = pod
        return 201, copy.deepcopy(pod)

    def _op_getPod(self, params: dict, body: Any) -> tuple[int, Any]:
        pod = self.pods.get(params["id"])
        return (200, copy.deepcopy(pod)) if pod else (404, "pod not found")

    def _op_listPods(self, params: dict, body: Any) -> tuple[int, Any]:
        return 200, {"pods": [copy.deepcopy(p) for p in self.pods.values()]}

    def _op_podAction(self, params: dict, body: dict) -> tuple[int, Any]:
        pod, action = self.pods.get(params["id"]), body["action"]
        if pod is None:
            return 404, "pod not found"
        if action not in ALLOWED_ACTIONS[pod["status"]]:
            return 409, f"cannot {action} a pod that is {pod['status']}"
        if action == "terminate":
            with self._lock:
                del self.pods[params["id"]]
            return 204, None
        self.set_status(params["id"], ACTION_LEADS_TO[action])
        return 200, copy.deepcopy(pod)


def _handler(server: FakeRunPod) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, answer_headers, body, drop = server.handle(
                self.command, self.path, headers, raw
            )
            if drop:  # the work is done, the answer never arrives
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self.send_response(status)
            for name, value in answer_headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            if body:
                self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler


def _route(template: str) -> tuple[int, str]:
    pattern = re.sub(r"\\{(\w+)\\}", r"(?P<\1>[^/]+)", re.escape(template))
    return template.count("{"), pattern


def _escape(template: str) -> str:
    return template.replace("~", "~0").replace("/", "~1")


def _json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None
