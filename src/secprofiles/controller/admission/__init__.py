"""The pod-binding admission webhook: the pure decision (``binding``), its serving and status upkeep
(``webhook``) and its certificate (``certificates``)."""
