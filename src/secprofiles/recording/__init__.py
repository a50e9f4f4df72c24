"""Recording seccomp profiles by watching workloads run: the core shared by ``secprofiles record`` and the node
recorder.

Mechanism: the recorded processes run under a filter whose default action is ``SCMP_ACT_LOG``; the kernel emits
one audit record (type 1326) per syscall, read from the audit netlink socket's read-only multicast group (no
auditd). Pure parts, then I/O:

- ``audit_records``: netlink framing, SECCOMP record parsing, the record's architecture.
- ``proc_events``: proc connector fork/exit events.
- ``container_identity``: ``/proc/<pid>/cgroup`` text -> container id and pod UID.
- ``syscall_sets``: the per-target set of (architecture, syscall number) and its small report form.
- ``attribution``: which recording a record belongs to: by audit session (``record``) or by container (node).
- ``synthesis``: syscall names -> a SeccompProfile object; the logging profile recorded pods run under.
- ``runtime_syscalls``: the measured post-filter syscalls of container runtimes (``data/runtime-syscalls.yaml``).
- ``report``: the RecordingReport status a node recorder writes and the operator reads.
- I/O: ``netlink`` (socket buffers, draining), ``audit_socket``, ``proc_connector``, ``procfs``, ``launcher``
  (run in its own interpreter: fresh audit session, logging filter, exec), ``audit_barrier``, ``command`` (the
  ``record -- COMMAND`` mechanism), ``container_recorder`` (a node's recorder).
"""
