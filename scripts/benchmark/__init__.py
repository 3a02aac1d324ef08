"""signalhub's benchmark, run by ``scripts/bench`` (targets from docs/design.md, "Limits we hold
ourselves to").

It drives the real system through its public APIs: a fresh database, the back office and one gateway
process started here (or the addresses given), users, devices and producers created with the domain
functions an admin's tools use, subscriptions made over ApprovalService, signals submitted signed over
SignalService, approvals over ApprovalService. N simulated bridges (one channel each, spread over several
load processes) hold DeviceGateway streams, open sealed deliveries and ack them the way the SDK does.

Because the machine is shared and noisy, the same run measures the bare limits with the same load
generator (a grpc.aio echo stream with no database: its round trips, throughput, CPU per frame and
fan-out; one Postgres commit; one Redis publish) and two yardsticks (NATS JetStream doing the same
fan-out and uplink burst; a device polling a unary RPC once a second for its work), and reports the
figures beside them, as ratios where a target is one. Results go to stdout and to
``bench/results.json``: a list of ``{"name", "value", "unit", "target", "met", "scenario"}``.

Modules: ``cli`` (the run, phase by phase), ``options`` (the command line), ``system`` (servers, worker
and database), ``world`` (accounts, devices, producers; the public API), ``limits`` and ``echo`` (the
bare limits), ``jetstream`` (the JetStream yardstick, with its load processes), ``polling`` and
``pollers`` (the polling yardstick: its server, and the load processes of its devices), ``scenarios``
(one function each; ``positions`` holds quote to CloseOrder, ``risk`` the risk limits), ``processes``
(spawned load processes and their pipe protocol, shared with the soak), ``loadgen`` and ``simdevice``
(the load processes and the simulated bridges they hold), ``meters`` (CPU, memory, the servers'
histograms), ``report`` (figures, the table, results.json), ``profile`` (``--profile``: py-spy).
The load, echo and yardstick processes are spawned and import only ``loadgen`` (with ``simdevice``),
``echo``, ``jetstream``, ``pollers`` or ``polling``, and this ``__init__``, which imports nothing: a load
process (``loadgen``, ``jetstream``, ``pollers``) loads no server module.
"""
