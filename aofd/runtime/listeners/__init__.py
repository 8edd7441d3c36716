"""Trigger listeners, one module per platform; `factory.build_listener` picks the module.

Each listener is built from its Trigger's compiled `ListenerSpec` (`aofd.specs.listeners`).
This package must not import the flow engine, the guard, routing or the audit package:
listeners reach them only through the `aofd.runtime.ports.Dispatch` and `AuditSink` ports and
`aofd.runtime.listeners.base.ApprovalDecider`. Platform modules do not import each other.
"""
