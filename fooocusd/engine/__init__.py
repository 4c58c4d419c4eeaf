"""Models, samplers and pipelines: a job's generation settings in, pixels out."""
