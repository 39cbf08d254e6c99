"""What graceshell tells an orchestrator, and what it hears from the cloud:
the optional HTTP endpoint (probes, /busy, /metrics) and the interruption
notices of spot and preemptible VMs. Nothing here is imported unless one of
the options is on, and then only after the worker has been spawned."""
