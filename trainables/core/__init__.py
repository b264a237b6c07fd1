"""The ground floor: the trial's config and its checks, the registries, metric names, the one
user-facing error, and small file helpers. Imports nothing else of the project."""
