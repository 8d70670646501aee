"""The daemon behind ``migd run``: one loop that acts, and what it tells the world.

The loop (events, jobs, timers), the view it publishes and the observer protocol,
the runtime directory behind ``migd status`` and ``migd reload``, sd_notify, the
config-file watcher, and the Prometheus metrics with their HTTP endpoint.

May import: ``migd.errors``, ``migd.command``, ``migd.core``, ``migd.formats``,
``migd.gpu`` and ``migd.node``. Never the verbs or the simulator.
"""
