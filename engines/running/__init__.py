"""Running engines: engine choice, parameters, launch, child processes, the backends."""
