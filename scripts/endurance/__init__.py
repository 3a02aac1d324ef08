"""signalhub's soak, run by ``scripts/soak``: many bridges held for a long time through connect and
disconnect churn (streams cancelled mid-flight among them) and steady traffic, while the gateway's
resident memory, open descriptors and event-loop lag (and the back office's lag) are sampled; the run
fails when they grow past the bounds it is given.

Modules: ``options`` (the command line), ``cli`` (the run), ``fleet`` (the load processes and their
churning bridges, built on ``scripts.benchmark.simdevice``), ``traffic`` (signals, approvals and cancels
through the public API), ``probe`` (/proc and the metrics ports), ``judge`` (growth against the bounds,
the table). The load processes are spawned and import only ``fleet`` and what it imports: no server
module.
"""
