"""Which provider serves a `model:` string, whether it can, and the provider clients themselves.

This module owns:

- `provider_problem(model, models_spec, ...)`: the apply-time check. A binding whose agent
  needs a provider that is not installed or not configured is Stalled with the returned
  reason (it names the provider and the extra to install), so a missing SDK or key shows
  in `aofctl get`, never as a runtime surprise. It has two parts: what the model string
  alone decides (pure) and `host_problem(provider, ...)`, the same for every model of a
  provider, so the applier looks the host up once per provider, not once per binding.
- `Providers`: one lazily built client per provider, keyed by provider name, built from the
  daemon config (`ModelsSpec`) and the daemon's environment (`ANTHROPIC_API_KEY`,
  `ANTHROPIC_BASE_URL`, `OPENAI_API_KEY`, `OPENAI_BASE_URL`, `GOOGLE_API_KEY`) - never
  from a resource. Provider modules are imported only when first needed.

It must not import a provider SDK at module level.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from collections.abc import Callable, Coroutine, Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from aofd import settings, threads
from aofd.runtime.providers import base
from aofd.specs import models as model_refs

log = structlog.get_logger()

ModuleAvailable = Callable[[str], bool]
"""`module_available("openai") -> bool`; injected so tests need not uninstall packages."""

_EXTRAS: Mapping[str, tuple[str, str, str]] = {
    # provider -> (importable module, package, extra)
    "anthropic": ("anthropic", "anthropic", "anthropic"),
    "openai": ("openai", "openai", "openai"),
    "google": ("google.genai", "google-genai", "google"),
}

LOCAL_PLACEHOLDER_KEY = "aofd-no-key"


_PROVIDER_MODULES: Mapping[str, str] = {
    "anthropic": "aofd.runtime.providers.anthropic",
    "google": "aofd.runtime.providers.google",
    **dict.fromkeys(model_refs.OPENAI_COMPATIBLE, "aofd.runtime.providers.openai"),
}
"""The adapter module of each provider (each imports its SDK): what `Providers.warm` imports."""


def module_available(name: str) -> bool:
    """True when `name` can be imported (without importing it)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _sdk_for(provider: str) -> str:
    return "openai" if provider in model_refs.OPENAI_COMPATIBLE else provider


def provider_problem(
    model: str,
    models: settings.ModelsSpec,
    *,
    provider: str | None = None,
    environ: Mapping[str, str] | None = None,
    available: ModuleAvailable = module_available,
) -> str | None:
    """Why an agent with this `model:` (and optional `provider:`) cannot run here, or None.

    Checks, in order: the provider is one aofd has; its SDK is installed (the reason names
    the extra, e.g. "provider google needs the google-genai package: pip install
    'aofd[google]'"); and it is configured (a key file or key variable, or a base URL for
    local OpenAI/Anthropic-compatible servers).
    """
    env = environ if environ is not None else {}
    ref = model_refs.parse_model(model, provider)
    static = model_refs.static_problem(ref, model)
    if static is not None:
        return static
    return host_problem(ref.provider, models, environ=env, available=available)


def host_problem(
    provider: str,
    models: settings.ModelsSpec,
    *,
    environ: Mapping[str, str] | None = None,
    available: ModuleAvailable = module_available,
) -> str | None:
    """The host's part of `provider_problem` for a supported `provider` (a canonical name): its
    SDK is installed and it is configured. The same for every model of the provider."""
    env = environ if environ is not None else {}
    sdk = _sdk_for(provider)
    module, package, extra = _EXTRAS[sdk]
    if not available(module):
        via = "" if sdk == provider else " (served through the OpenAI-compatible client)"
        return f"provider {provider}{via} needs the {package} package: pip install 'aofd[{extra}]'"
    return _config_problem(provider, models, env)


def _config_problem(provider: str, models: settings.ModelsSpec, env: Mapping[str, str]) -> str | None:
    if provider == "anthropic":
        if _key_ok(models.anthropic_api_key_file) or env.get("ANTHROPIC_API_KEY"):
            return None
        if models.anthropic_base_url or env.get("ANTHROPIC_BASE_URL"):
            return None  # a local Anthropic-compatible server may need no key
        return (
            "provider anthropic is not configured: set models.anthropic_api_key_file in the daemon config "
            "or ANTHROPIC_API_KEY in the daemon's environment"
        )
    if provider == "openai":
        if _key_ok(models.openai_api_key_file) or env.get("OPENAI_API_KEY"):
            return None
        if models.openai_base_url or env.get("OPENAI_BASE_URL"):
            return None
        return (
            "provider openai is not configured: set models.openai_api_key_file in the daemon config "
            "or OPENAI_API_KEY in the daemon's environment"
        )
    if provider in model_refs.OPENAI_COMPATIBLE:
        if models.openai_base_url or env.get("OPENAI_BASE_URL"):
            return None
        return (
            f"provider {provider} is served through the OpenAI-compatible client and needs "
            "models.openai_base_url (or OPENAI_BASE_URL) pointing at its endpoint"
        )
    if provider == "google":
        if _key_ok(models.google_api_key_file) or env.get("GOOGLE_API_KEY") or env.get("GEMINI_API_KEY"):
            return None
        return (
            "provider google is not configured: set models.google_api_key_file in the daemon config "
            "or GOOGLE_API_KEY in the daemon's environment"
        )
    return f"provider {provider} is not supported"


def _key_ok(path: Path | None) -> bool:
    return path is not None and path.is_file()


def _read_key(path: Path | None, env: Mapping[str, str], *names: str) -> str | None:
    if path is not None:
        return path.read_text(encoding="utf-8").strip()
    for name in names:
        if env.get(name):
            return env[name]
    return None


class Providers:
    """The provider clients of one daemon: built on first use, closed by `aclose()`.

    `factories` (tests, benchmarks) may replace how a provider is built:
    `{"anthropic": lambda: FakeProvider()}`; `http_clients` passes an SDK-compatible HTTP
    client per provider (the benchmark times the HTTP round trip with one).
    """

    def __init__(
        self,
        *,
        models: settings.ModelsSpec,
        environ: Mapping[str, str],
        factories: Mapping[str, Callable[[], base.ModelProvider]] | None = None,
        http_clients: Mapping[str, Any] | None = None,
    ) -> None:
        self._models = models
        self._env = dict(environ)
        self._factories = dict(factories or {})
        self._http_clients = dict(http_clients or {})
        self._clients: dict[str, base.ModelProvider] = {}
        self.on_warmed: Callable[[], None] | None = None
        """Called on the loop when a `warm` that imported an SDK ends (the daemon freezes what it loaded)."""
        self._warming = 0

    @property
    def models(self) -> settings.ModelsSpec:
        return self._models

    def problem(self, model: str, provider: str | None = None) -> str | None:
        """`provider_problem` for this daemon's config and environment (a factory always counts as usable)."""
        ref = model_refs.parse_model(model, provider)
        if ref.provider in self._factories:
            return None
        return provider_problem(model, self._models, provider=provider, environ=self._env)

    def ref_problem(self, ref: model_refs.ModelRef) -> str | None:
        """`problem` for a compiled model reference (`aofd.specs.models.ModelRef`)."""
        provider, static = self.split(ref)
        return static if static is not None or provider is None else self.readiness(provider)

    def split(self, ref: model_refs.ModelRef) -> tuple[str | None, str | None]:
        """`ref_problem` in two parts: `(provider, None)` when `ref` may run if `readiness(provider)`
        says so, `(None, why)` when it never can, whatever the host has; `(None, None)` when it
        always can (a factory). Pure and cheap: no import lookup, no file."""
        parsed = model_refs.parse_model(ref.model, ref.provider)
        if parsed.provider in self._factories:
            return None, None
        static = model_refs.static_problem(parsed, ref.model)
        return (None, static) if static is not None else (parsed.provider, None)

    def readiness(self, provider: str) -> str | None:
        """Why no model of `provider` (a name `split` returned) can run here now, or None: its SDK
        is installed and it is configured. Looked up on every call (an import lookup, the key
        files): callers ask once per provider, not once per model or binding."""
        if provider in self._factories:
            return None
        return host_problem(provider, self._models, environ=self._env)

    @property
    def warming(self) -> bool:
        """Whether a `warm` is importing SDKs now."""
        return self._warming > 0

    def warm(self, providers: Iterable[str]) -> Coroutine[Any, Any, None]:
        """Import the SDK of each provider in a worker thread and build its client (once per
        provider): the first run that needs it then does not pay for it within its deadline. A
        failure is left for that run to report. The caller runs the returned coroutine in the
        background; `warming` is True from this call on (not only once that coroutine starts),
        so the pass that asked for it already sees it."""
        wanted = [
            (provider, module)
            for provider in providers
            if (module := _PROVIDER_MODULES.get(provider)) is not None
            and provider not in self._clients
            and provider not in self._factories
        ]
        if wanted:
            self._warming += 1
        return self._warm(wanted)

    async def _warm(self, wanted: list[tuple[str, str]]) -> None:
        if not wanted:
            return
        try:
            for provider, module in wanted:
                try:
                    # A daemon thread, not the default executor: a stop right after start does
                    # not wait for an import that can take seconds (asyncio.run joins the executor).
                    await threads.run_blocking(
                        functools.partial(importlib.import_module, module),
                        time_limit=None,
                        name=f"aofd-warm-{provider}",
                    )
                    self.get(provider)
                except Exception as exc:  # the run that needs it reports the problem
                    log.info("provider.warm_failed", provider=provider, error=type(exc).__name__)
        finally:
            self._warming -= 1
        if self.on_warmed is not None:
            self.on_warmed()

    def get(self, provider: str) -> base.ModelProvider:
        """The client for `provider` (a canonical name from `model_refs.parse_model`), built once."""
        client = self._clients.get(provider)
        if client is None:
            client = self._build(provider)
            self._clients[provider] = client
        return client

    def _build(self, provider: str) -> base.ModelProvider:
        if provider in self._factories:
            return self._factories[provider]()
        problem = provider_problem(f"{provider}:x", self._models, environ=self._env)
        if problem:
            raise base.ModelError(problem, provider=provider, retryable=False)
        m = self._models
        if provider == "anthropic":
            from aofd.runtime.providers import anthropic as anthropic_provider

            key = _read_key(m.anthropic_api_key_file, self._env, "ANTHROPIC_API_KEY") or LOCAL_PLACEHOLDER_KEY
            base_url = m.anthropic_base_url or self._env.get("ANTHROPIC_BASE_URL") or None
            return anthropic_provider.AnthropicProvider(
                api_key=key,
                base_url=base_url,
                timeout=m.request_timeout,
                http_client=self._http_clients.get(provider),
            )
        if provider in model_refs.OPENAI_COMPATIBLE:
            from aofd.runtime.providers import openai as openai_provider

            key = _read_key(m.openai_api_key_file, self._env, "OPENAI_API_KEY") or LOCAL_PLACEHOLDER_KEY
            base_url = m.openai_base_url or self._env.get("OPENAI_BASE_URL") or None
            return openai_provider.OpenAIProvider(
                api_key=key,
                base_url=base_url,
                timeout=m.request_timeout,
                name=provider,
                http_client=self._http_clients.get(provider),
            )
        if provider == "google":
            from aofd.runtime.providers import google as google_provider

            key = _read_key(m.google_api_key_file, self._env, "GOOGLE_API_KEY", "GEMINI_API_KEY") or ""
            return google_provider.GoogleProvider(api_key=key, timeout=m.request_timeout)
        raise base.ModelError(f"provider {provider} is not supported", provider=provider, retryable=False)

    async def aclose(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.aclose()
