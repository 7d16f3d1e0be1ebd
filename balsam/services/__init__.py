"""The site agent and its services: processing, scheduler, elastic queue, queue maintainer, transfers, file
cleaner, and the /v1 HTTP API (balsam.http) through which every other host reaches the site DB. ``agent`` is the
composition root that builds them from a site's settings."""
