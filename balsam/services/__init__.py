"""The site agent and its services: processing, scheduler, elastic queue, queue maintainer, transfers, file
cleaner, and the channel through which launchers on other hosts reach the site DB. ``agent`` is the
composition root that builds them from a site's settings."""
