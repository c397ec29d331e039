"""CreateImageCollection jobs through the gateway (README, "Jobs"): the ArcGIS GP routes of
the task under the proxy's prefix, parameters checked before anything is forwarded, each job
recorded for its owner, its status relayed, waited on without polling (a long poll, Server-Sent
Events; one poller per job across the replicas) and its results relayed with their URLs
mapped to the gateway.

- ``params``: the checks of a submission (arcgis-rest.md section 5.2).
- ``store``: job records, states and poller leases, in Redis or memory.
- ``upstream``: the calls to the upstream GP task, with the gateway's credentials.
- ``watch``: one watch per job and replica, one poller per job.
- ``front``: the routes, in ArcGIS error JSON.
"""

from gateway.jobs.front import RELAY, JobsRelay, jobs_app, mount_path

__all__ = ["RELAY", "JobsRelay", "jobs_app", "mount_path"]
