"""Deployment, which no trial uses: the export bundle (build, load, check) and the REST
service's app."""
