"""Governed cross-service sharing: catalog, grants, subscriptions, history and audit."""
