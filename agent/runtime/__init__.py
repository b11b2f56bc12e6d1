"""The running agent: pipelines' worker threads, reload, worker processes, health and metrics."""
