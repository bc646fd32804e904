"""Where work runs and what it costs: the GPU catalogue, and estimates of a job's needs."""
