"""The admin API's dry run (`POST /api/v1/diff`, `aofctl diff`): a candidate tree planned against
what runs, without ever comparing a secret; pure.

A dry run must not be an oracle: if it substituted the daemon's variables and compared digests,
posting a guessed secret would answer "0 to update" exactly when the guess is right, and its
undefined-variable errors would tell which variables exist. So here:

- the candidate is built with no variables looked up at all (`undefined="ignore"`: nothing is
  said about which variables exist) and without the install's digest key;
- every secret-bearing value (`aofd.plan.extract.secret_values`), on both sides, is masked
  before digesting: the running side's digests are recomputed from the applied resources the
  same way (`public_inventory`), so a secret-bearing value, guessed right or wrong, is simply
  not compared;
- listener digests are recomputed the same way (`aofd.specs.listeners.config_digest` over the
  masked digest).

No I/O, no clock, no logging.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from types import MappingProxyType

from aofd.plan import compiler, desired, extract, registry
from aofd.plan import diff as diff_mod
from aofd.resources import ids
from aofd.resources.kinds import base as kinds_base
from aofd.resources.kinds import trigger as trigger_kind
from aofd.specs import listeners as listener_specs

NOT_COMPARED = (
    "secret-bearing values (Trigger tokens, secrets and required_headers, Context env, and "
    "kubeconfig set from a variable) are not compared, and no variable is substituted"
)


def public_digest(resource: kinds_base.LoadedResource, digest: ids.Digest) -> ids.Digest:
    """The digest of `resource` with its secret-bearing values masked (`digest` when it has none)."""
    if not extract.secret_values(resource):
        return digest
    return kinds_base.digest(extract.public_model(resource))


def public_inventory(state: desired.DesiredState, running_listeners: Iterable[str]) -> diff_mod.Inventory:
    """What runs (`state`, the applied desired state) as a dry run compares it: secrets masked."""
    digests = {
        k: public_digest(r, state.digests[k]) for k, r in state.resources.items() if k in state.digests
    }
    effective: dict[ids.ResourceKey, ids.Digest] = {}
    for binding in state.bindings.values():
        reach = binding.uses | {binding.key}
        if any(k not in digests for k in reach):
            continue
        components = sorted((k.kind.value, k.namespace, k.name, digests[k]) for k in reach)
        effective[binding.key] = registry.effective_digest(components)
    listeners: dict[str, str] = {}
    for name in running_listeners:
        key = ids.ResourceKey.of(ids.Kind.TRIGGER, name)
        resource = state.resources.get(key)
        if resource is not None and isinstance(resource.model, trigger_kind.Trigger):
            listeners[name] = listener_specs.config_digest(resource.model, digests[key])
        else:
            listeners[name] = ""
    return diff_mod.Inventory(
        digests=MappingProxyType(digests),
        effective=MappingProxyType(effective),
        revision=state.revision,
        listeners=MappingProxyType(listeners),
    )


def plan(
    views: Sequence[desired.SourceView],
    *,
    applied: desired.DesiredState,
    running_listeners: Iterable[str],
    allow: Sequence[str],
    options: compiler.Options,
) -> diff_mod.Plan | list[str]:
    """The plan the candidate `views` would cause against `applied`, or its errors."""
    state = desired.build(views, variables={}, allow=allow, undefined="ignore")
    compiled = compiler.build(state, options=options)
    if compiled.errors:
        return [i.format() for i in compiled.errors]
    return diff_mod.compute(compiled, public_inventory(applied, running_listeners))
