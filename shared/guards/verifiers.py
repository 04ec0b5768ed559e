"""Who decides whether a principal may call a tool: pluggable verifiers behind the permission memo.

A verifier answers for a batch of tools at once, so a slow one (an identity provider over HTTP)
can answer the misses of a batch concurrently. A verifier that cannot answer raises
VerifierUnavailable for that tool; the memo then fails closed, never open."""

import hashlib
import logging
import threading
import tomllib
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Protocol

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.identity import Principal
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

ANY = "*"


class VerifierUnavailable(RuntimeError):
    """The verifier could not give an answer (down, timed out, misconfigured)."""


class Verifier(Protocol):
    name: str

    def verify_many(self, principal: Principal, tools: list[str]) -> dict[str, bool | VerifierUnavailable]:
        """For each tool: True (allowed), False (denied) or the reason it could not be decided."""


# --- The policy file ----------------------------------------------------------------------------------

class TenantPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roles: dict[str, list[str]] = {}


class PolicyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tenants: dict[str, TenantPolicy] = {}

    def allowed_tools(self, principal: Principal) -> set[str]:
        """The union over the principal's roles; a tenant's own list for a role replaces the "*" tenant's."""
        mine = self.tenants.get(principal.tenant, TenantPolicy()).roles
        every = self.tenants.get(ANY, TenantPolicy()).roles
        granted: set[str] = set()
        for role in principal.roles:
            granted.update(mine[role] if role in mine else every.get(role, []))
        return granted

    def allows(self, principal: Principal, tool: str) -> bool:
        granted = self.allowed_tools(principal)
        return ANY in granted or tool in granted


def shipped_policy_path() -> Path:
    return Path(str(resources.files("shared.guards.data").joinpath("auth-policy.toml")))


def parse_policy(text: str) -> PolicyFile:
    return PolicyFile.model_validate(tomllib.loads(text))


class PolicyFileVerifier:
    """Roles -> allowed tools per tenant, from a TOML file.

    The file is read on every call (it is small, and calls only happen on memo misses) so that an
    edit applies to the very next check; it is parsed again only when its bytes change."""

    name = "policy"

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._digest: bytes | None = None
        self._policy: PolicyFile | None = None

    def load(self) -> PolicyFile:
        try:
            raw = self.path.read_bytes()
        except OSError as exc:
            raise VerifierUnavailable(f"cannot read policy file {self.path}: {exc.strerror or exc}") from exc
        digest = hashlib.sha256(raw).digest()
        with self._lock:
            if digest != self._digest:
                try:
                    self._policy = parse_policy(raw.decode())
                except (tomllib.TOMLDecodeError, ValidationError, UnicodeDecodeError) as exc:
                    raise VerifierUnavailable(f"policy file {self.path} is invalid: {exc}") from exc
                self._digest = digest
            return self._policy

    def verify_many(self, principal: Principal, tools: list[str]) -> dict[str, bool | VerifierUnavailable]:
        try:
            policy = self.load()
        except VerifierUnavailable as exc:
            return {tool: exc for tool in tools}
        return {tool: policy.allows(principal, tool) for tool in tools}


# --- An identity provider over HTTP -------------------------------------------------------------------

class HttpVerifier:
    """POSTs {"user", "tenant", "roles", "tool"} and expects {"allowed": true|false} within the timeout.

    Anything else (an error status, a malformed body, a timeout) means "cannot tell", never "allowed"."""

    name = "http"

    def __init__(self, url: str, timeout_s: float, concurrency: int):
        if not url:
            raise ValueError("TURNSTREAM_AUTH_VERIFIER=http needs TURNSTREAM_AUTH_VERIFIER_URL")
        self.url = url
        self._client = httpx.Client(timeout=timeout_s)
        self._pool = ThreadPoolExecutor(max_workers=max(1, concurrency), thread_name_prefix="auth-verify")

    def verify_one(self, principal: Principal, tool: str) -> bool:
        body = {"user": principal.user, "tenant": principal.tenant, "roles": list(principal.roles), "tool": tool}
        try:
            response = self._client.post(self.url, json=body)
        except httpx.HTTPError as exc:
            raise VerifierUnavailable(f"identity provider {self.url} did not answer: {exc!r}") from exc
        if response.status_code != 200:
            raise VerifierUnavailable(f"identity provider {self.url} answered HTTP {response.status_code}")
        try:
            allowed = response.json()["allowed"]
        except (ValueError, KeyError, TypeError) as exc:
            raise VerifierUnavailable(f"identity provider {self.url} sent no 'allowed' field") from exc
        if not isinstance(allowed, bool):
            raise VerifierUnavailable(f"identity provider {self.url} sent a non-boolean 'allowed'")
        return allowed

    def _safe(self, principal: Principal, tool: str) -> bool | VerifierUnavailable:
        try:
            return self.verify_one(principal, tool)
        except VerifierUnavailable as exc:
            return exc

    def verify_many(self, principal: Principal, tools: list[str]) -> dict[str, bool | VerifierUnavailable]:
        if len(tools) == 1:
            return {tools[0]: self._safe(principal, tools[0])}
        answers = self._pool.map(lambda tool: self._safe(principal, tool), tools)
        return dict(zip(tools, answers, strict=True))


def make_verifier(settings: Settings | None = None) -> Verifier:
    settings = settings or get_settings()
    return _cached_verifier(settings.auth_verifier, settings.auth_policy_file, settings.auth_verifier_url,
                            settings.auth_verifier_timeout_s, settings.auth_verifier_concurrency)


@lru_cache(maxsize=8)
def _cached_verifier(kind: str, policy_file: str, url: str, timeout_s: float, concurrency: int) -> Verifier:
    """One verifier per configuration and process, so HTTP connections and the parsed policy are reused."""
    if kind == "http":
        return HttpVerifier(url, timeout_s, concurrency)
    return PolicyFileVerifier(Path(policy_file) if policy_file else shipped_policy_path())
