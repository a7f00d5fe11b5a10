"""Grafana provisioning and dashboards as code (`silobreak grafana build`)."""
