"""audit layer of aofd: the per-Context append-only, hash-chained JSONL audit log.

Modules: `records` (the ECS-shaped line), `segment` (files, chain, recovery; one thread),
`journal` (`AuditLog`, the async front the daemon wires to `runtime.ports.AuditSink`),
`verify` and `tail` (offline readers), `redact` and `logging` (operational logs without secrets).
"""
