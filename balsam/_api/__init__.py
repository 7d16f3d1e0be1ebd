"""The implementation of :mod:`balsam.api` (models, queries, apps, site scope)."""
