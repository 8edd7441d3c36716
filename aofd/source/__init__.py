"""aofd.source: turns "where the resources live" into immutable, revision-stamped snapshots.

Modules:

- `rules`: which names are candidate resource files, hidden or editor temp files; cap accounting.
- `redact`: scrub URLs and secrets out of messages before they reach logs, errors or status.
- `backoff`: the exponential, capped, jittered retry policy.
- `known_hosts`: OpenSSH known_hosts parsing and matching (pure).
- `hooks`: push-webhook signature verification (pure).
- `directory`: a local tree read into a `Snapshot` (no third-party imports).
- `git`: the pygit2 adapter (a bare mirror, ls-remote short-circuit, trees read from objects).
- `watch`: the watchfiles adapter (coalesced change signals).
- `threads`: one blocking call in a daemon thread with a timeout (abandoned, never joined).
- `runner`: the `Source` objects the reconciler drives (`build_source`).

This package must not import aofd.runtime, aofd.audit or aofd.reconcile. pygit2 is imported
only by `git`, watchfiles only by `watch`; their errors are translated there into `SourceError`.
"""
