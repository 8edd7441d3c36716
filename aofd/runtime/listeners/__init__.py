"""Trigger listeners, one module per platform; `factory.build_listener` picks the module.

This package must not import the flow engine, the guard or the audit package: listeners reach
them only through `aofd.runtime.router.Dispatcher`, `aofd.runtime.ports.AuditSink` and
`aofd.runtime.listeners.base.ApprovalDecider`.
"""
