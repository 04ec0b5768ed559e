"""What a tool declares to the execution cache: whether its results may be shared, with whom
(everyone, the tenant, the user), for how long, and which parameters never change its answer.

Two sources, in order: the declarations file (TURNSTREAM_EXEC_CACHE_TOOLS_FILE, shipped as
data/tool-cache.toml) and what the tool declares about itself (its MCP metadata). A tool that
declares nothing is not cacheable: caching a side effect is worse than running a read twice."""

import re
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveInt

from shared import defaults, keys
from shared.settings import get_settings

Scope = Literal["global", "tenant", "user"]


@dataclass(frozen=True)
class ToolSpec:
    """What a tool declares to the cache. Unknown tools get the default: not cacheable."""

    name: str
    cacheable: bool = False
    scope: Scope = "user"
    ttl_s: int | None = None
    volatile: frozenset[str] = frozenset()

    @classmethod
    def from_declared(cls, name: str, declared: dict | None) -> "ToolSpec":
        """A spec from what a tool says about itself (e.g. MCP tool metadata):
        {"cache": "global"|"tenant"|"user"|"never", "ttl_s": int, "volatile": [names]}.
        Anything missing or unexpected means "not cacheable"."""
        declared = declared if isinstance(declared, dict) else {}
        scope, ttl_s, volatile = declared.get("cache"), declared.get("ttl_s"), declared.get("volatile") or []
        if scope not in ("global", "tenant", "user"):
            return cls(name)
        ttl_ok = isinstance(ttl_s, int) and not isinstance(ttl_s, bool) and ttl_s > 0
        names = frozenset(normalize_name(v) for v in volatile if isinstance(v, str)) if isinstance(volatile, list) \
            else frozenset()
        return cls(name, True, scope, ttl_s if ttl_ok else None, names)


class _ToolEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cacheable: bool = False
    scope: Scope = "user"
    ttl_s: PositiveInt | None = None
    volatile: list[str] = []


class _GlobalEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    volatile: list[str] = []


class _DeclarationsFile(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    global_: _GlobalEntry = Field(default_factory=_GlobalEntry, alias="global")
    tools: dict[str, _ToolEntry] = {}


@lru_cache(maxsize=8192)
def normalize_name(name: str) -> str:
    """requestId, request_id and Request-ID are the same volatile field."""
    return re.sub(r"[-_]", "", name).lower()


@dataclass(frozen=True)
class Declarations:
    volatile: frozenset[str] = frozenset(map(normalize_name, defaults.EXEC_CACHE_VOLATILE_FIELDS))
    tools: dict[str, ToolSpec] = field(default_factory=dict)

    def spec(self, tool: str, declared: dict | None = None) -> ToolSpec:
        """The declarations file wins; otherwise what the tool declares itself; otherwise not cacheable."""
        return self.tools.get(tool) or ToolSpec.from_declared(tool, declared)


def parse_declarations(text: str) -> Declarations:
    parsed = _DeclarationsFile.model_validate(tomllib.loads(text))
    tools = {name: ToolSpec(keys.valid_tool(name), entry.cacheable, entry.scope, entry.ttl_s,
                            frozenset(map(normalize_name, entry.volatile)))
             for name, entry in parsed.tools.items()}
    return Declarations(Declarations().volatile | frozenset(map(normalize_name, parsed.global_.volatile)), tools)


def shipped_declarations_path() -> Path:
    return Path(str(resources.files("shared.guards.data").joinpath("tool-cache.toml")))


@lru_cache(maxsize=4)
def load_declarations(path: str = "") -> Declarations:
    """Declarations are configuration: read once per process (restart workers after editing)."""
    return parse_declarations(Path(path or shipped_declarations_path()).read_text())


def declaration(tool: str, declared: dict | None = None) -> ToolSpec:
    return load_declarations(get_settings().exec_cache_tools_file).spec(tool, declared)
