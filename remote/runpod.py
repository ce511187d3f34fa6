"""A small client of RunPod's REST API v2: create a pod, read it, list pods, act on it.

The contract is RunPod's published OpenAPI document (a copy: ``shared/runpod/openapi-v2.json``
beside DESIGN.md). Its server is ``https://api.runpod.io`` and its paths start with ``/v2``;
this client takes the API base *including* the version, ``https://api.runpod.io/v2`` (the URL
RunPod's migration guide gives), and appends the resource path: ``{api}/pods``,
``{api}/pods/{id}``, ``{api}/pods/{id}/action``.

Answers, as the document's create-pod table says:

- 429 (rate limited) and 5xx (transient upstream failure): retried here, waiting
  ``Retry-After`` seconds for a 429 and a growing backoff for a 5xx;
- any other error: :class:`RunPodError`, carrying the problem's status, title, detail and
  ``errors`` (RFC 9457 problem+json), so the caller decides (next GPU type, stop, ...).

No message this module builds carries the API key or a URL password (:mod:`remote.masking`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.stop import stop_base

from producer.redaction import redact as mask

DEFAULT_API_URL = "https://api.runpod.io/v2"
API_URL_ENV = "RUNPOD_API_URL"
API_KEY_ENV = "RUNPOD_API_KEY"
RETIRED_V1_HOST = "rest.runpod.io"


class RunPodError(RuntimeError):
    """RunPod answered with an error, or could not be reached.

    Attributes:
        status: the HTTP status, or None when no answer came.
        title: the problem's title (RFC 9457).
        detail: the problem's detail.
        errors: the individual validation failures a 422 lists.
        retry_after_s: the ``Retry-After`` of a 429, in seconds.
        sent: False when the request certainly never reached RunPod (connection refused).
        ambiguous: True when a create may or may not have happened; never retried.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        title: str = "",
        detail: str = "",
        errors: Iterable[str] = (),
        retry_after_s: float | None = None,
        sent: bool = True,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = list(errors)
        self.retry_after_s = retry_after_s
        self.sent = sent
        self.ambiguous = ambiguous

    @property
    def transient(self) -> bool:
        """True for what the document says to retry in place: 429, 5xx, no answer."""
        if self.ambiguous:
            return False
        return self.status is None or self.status == 429 or self.status >= 500


@dataclass(frozen=True)
class RetryPolicy:
    """How long a call keeps retrying 429s, 5xx answers and lost connections.

    Attributes:
        attempts: calls in all, the first included (1 = no retry).
        first_wait_s: the first backoff after a 5xx or a lost connection; it doubles.
        max_wait_s: the longest backoff between two attempts.
        max_retry_after_s: the longest ``Retry-After`` obeyed; a longer one ends the retries
            (an hour-window limit is not worth blocking a command line for).
    """

    attempts: int = 5
    first_wait_s: float = 1.0
    max_wait_s: float = 30.0
    max_retry_after_s: float = 120.0


NO_RETRY = RetryPolicy(attempts=1)


class RunPodClient:
    """Calls RunPod's REST API v2 with the bearer API key.

    Args:
        api_url: the API base including the version, e.g. ``https://api.runpod.io/v2``.
        api_key: the RunPod API key (sent as ``Authorization: Bearer``; never shown).
        secrets: more values to mask in messages (the pod's Redis password).
        retry: the retry policy for 429, 5xx and lost connections.
        timeout_s: the timeout of one HTTP call.
        sleep: how to wait between attempts (tests pass a recorder).
    """

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        secrets: Iterable[str] = (),
        retry: RetryPolicy = RetryPolicy(),
        timeout_s: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        self.retry = retry
        self.sleep = sleep
        self._secrets = [api_key, *secrets]
        self._http = httpx.Client(
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
            timeout=timeout_s,
        )

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def __enter__(self) -> RunPodClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def mask(self, text: str) -> str:
        """Return ``text`` with this client's secrets and any URL password masked."""
        return mask(text, self._secrets)

    def create_pod(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST {api}/pods`` (``createPod``); return the created pod (201).

        A create is not idempotent, so when the connection broke after the request went out
        the pods are listed and one with this body's name and environment is taken as the
        created pod; only if there is none is the create sent again.

        Raises:
            RunPodError: on any error answer but 429/5xx, or when retries ran out.
        """

        def attempt() -> dict[str, Any]:
            try:
                return self._call("POST", "/pods", body).json()
            except RunPodError as exc:
                if exc.status is None and exc.sent:
                    return self._created_anyway(body, exc)
                raise

        return self._retrying(attempt)

    def _created_anyway(self, body: dict[str, Any], lost: RunPodError) -> dict[str, Any]:
        # The create went out and its answer was lost: a second create could start a second
        # billed pod, so look for the first one before trying again.
        try:
            created = self.find_pod(body["name"], body.get("env") or {})
        except RunPodError as exc:
            raise RunPodError(
                f"{lost}; whether the pod was created is unknown ({exc}): look for a pod named"
                f" {body['name']!r} before launching again",
                ambiguous=True,
            ) from None
        if created is None:
            raise lost  # it was not created: the retry creates it
        return created

    def get_pod(self, pod_id: str) -> dict[str, Any] | None:
        """``GET {api}/pods/{id}`` (``getPod``); return the pod, or None when it is gone (404)."""
        try:
            return self._retrying(lambda: self._call("GET", f"/pods/{pod_id}").json())
        except RunPodError as exc:
            if exc.status == 404:
                return None
            raise

    def list_pods(self) -> list[dict[str, Any]]:
        """``GET {api}/pods`` (``listPods``); return the account's pods."""
        return self._retrying(lambda: self._call("GET", "/pods").json().get("pods", []))

    def find_pod(self, name: str, env: dict[str, str]) -> dict[str, Any] | None:
        """Return the pod named ``name`` whose environment holds all of ``env``, if any."""
        for pod in self.list_pods():
            pod_env = pod.get("env") or {}
            if pod.get("name") == name and all(pod_env.get(k) == v for k, v in env.items()):
                return pod
        return None

    def pod_action(self, pod_id: str, action: str) -> dict[str, Any] | None:
        """``POST {api}/pods/{id}/action`` (``podAction``) with ``{"action": action}``.

        Returns:
            The updated pod (200), or None for ``terminate`` (204, no body).

        Raises:
            RunPodError: e.g. 409 when the action is not valid in the pod's status, 404.
        """
        response = self._retrying(
            lambda: self._call("POST", f"/pods/{pod_id}/action", {"action": action})
        )
        return response.json() if response.content else None

    def _retrying(self, call: Callable[[], Any]) -> Any:
        retrying = Retrying(
            stop=stop_after_attempt(self.retry.attempts) | _RetryAfterTooLong(self.retry),
            wait=_wait(self.retry),
            retry=retry_if_exception(lambda e: isinstance(e, RunPodError) and e.transient),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(call)

    def _call(self, method: str, path: str, body: Any = None) -> httpx.Response:
        url = f"{self.api_url}{path}"
        try:
            response = self._http.request(method, url, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise RunPodError(self._unreachable(exc), sent=False) from None
        except httpx.HTTPError as exc:  # the request may have arrived: the caller checks
            raise RunPodError(self._unreachable(exc)) from None
        if response.status_code >= 400:
            raise self._problem(method, path, response)
        return response

    def _unreachable(self, exc: Exception) -> str:
        return self.mask(f"RunPod API at {self.api_url} did not answer: {type(exc).__name__}")

    def _problem(self, method: str, path: str, response: httpx.Response) -> RunPodError:
        problem = _problem_fields(response)
        status = response.status_code
        title = str(problem.get("title") or response.reason_phrase or "error")
        detail = str(problem.get("detail") or "")
        errors = [str(e) for e in problem.get("errors") or []]
        text = f"RunPod {method} {path} answered {status} {title}"
        if detail:
            text += f": {detail}"
        if errors:
            text += " (errors: " + "; ".join(errors) + ")"
        if status == 410 and RETIRED_V1_HOST in self.api_url:
            text += f"; {RETIRED_V1_HOST} is RunPod's retired v1 API, use {DEFAULT_API_URL}"
        return RunPodError(
            self.mask(text),
            status=status,
            title=self.mask(title),
            detail=self.mask(detail),
            errors=[self.mask(e) for e in errors],
            retry_after_s=_retry_after_s(response) if status == 429 else None,
        )


def _problem_fields(response: httpx.Response) -> dict[str, Any]:
    # RFC 9457 problem+json; anything else (a proxy's HTML page) is summarised as its detail.
    try:
        problem = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"detail": " ".join(response.text.split())[:300]}
    return problem if isinstance(problem, dict) else {"detail": str(problem)[:300]}


def _retry_after_s(response: httpx.Response) -> float | None:
    # The document gives Retry-After as integer seconds.
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _wait(policy: RetryPolicy) -> Callable[[RetryCallState], float]:
    def wait(state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RunPodError) and error.retry_after_s is not None:
            return error.retry_after_s
        return min(policy.max_wait_s, policy.first_wait_s * 2 ** (state.attempt_number - 1))

    return wait


class _RetryAfterTooLong(stop_base):
    """Stop retrying when a 429 asks to wait longer than the policy allows."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy

    def __call__(self, state: RetryCallState) -> bool:
        error = state.outcome.exception() if state.outcome else None
        wait_s = getattr(error, "retry_after_s", None)
        return wait_s is not None and wait_s > self.policy.max_retry_after_s
