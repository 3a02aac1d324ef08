"""signalhub's benchmark, run by ``scripts/bench`` (targets from docs/design.md, "Limits we hold
ourselves to").

It drives the real system through its public APIs: a fresh database, the back office and one gateway
process started here (or the addresses given), users, devices and producers created with the domain
functions an admin's tools use, subscriptions made over ApprovalService, signals submitted signed over
SignalService, approvals over ApprovalService. N simulated bridges (one channel each, spread over several
load processes) hold DeviceGateway streams, open sealed deliveries and ack them the way the SDK does.

Because the machine is shared and noisy, the same run measures the bare limits with the same load
generator (a grpc.aio echo stream with no database, one Postgres commit, one Redis publish) and reports
the figures beside them. Results go to stdout and to ``bench/results.json``: a list of
``{"name", "value", "unit", "target", "met", "scenario"}``.

Modules: ``cli`` (the run, phase by phase), ``options`` (the command line), ``system`` (servers, worker
and database), ``world`` (accounts, devices, producers; the public API), ``limits`` and ``echo`` (the
bare limits), ``scenarios`` (one function each; ``positions`` holds quote to CloseOrder), ``loadgen`` and
``simdevice`` (the load processes and the simulated bridges they hold), ``meters`` (CPU and memory),
``report`` (figures, the table, results.json).
The load and echo processes are spawned and import only ``loadgen`` (with ``simdevice``) and ``echo``,
and this ``__init__``, which imports nothing: a load process loads no server module.
"""
