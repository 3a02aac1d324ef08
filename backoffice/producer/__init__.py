"""The producer SDK: what a strategy engine uses to send signals (``pip install signalhub``, no server
dependencies). ``ProducerClient`` makes signed, deadline-bound calls to ``SignalService`` that are safe
to retry; ``messages`` builds the requests; ``cli`` is `signalhub producer`.

    async with ProducerClient("127.0.0.1:50051", producer_id, "shs_...") as client:
        signal = await client.submit_signal("XAUUSD", "buy", entry_price="2034.15", stop_loss="2020")

It imports only ``signalhub.protocol``, ``signalhub.v1`` and itself.
"""

from backoffice.producer.client import (
    CANCEL_SIGNAL,
    DEFAULT_DEADLINE_SECONDS,
    DEFAULT_TARGET,
    REQUEST_ID_HEADER,
    SUBMIT_QUOTES,
    SUBMIT_SIGNAL,
    ProducerCallError,
    ProducerClient,
    RetryPolicy,
    channel_options,
)
from backoffice.producer.messages import (
    Decimalish,
    SideLike,
    SignalOptions,
    decimal_string,
    make_quote,
    parse_side,
    submit_signal_request,
)

__all__ = [
    "CANCEL_SIGNAL",
    "DEFAULT_DEADLINE_SECONDS",
    "DEFAULT_TARGET",
    "REQUEST_ID_HEADER",
    "SUBMIT_QUOTES",
    "SUBMIT_SIGNAL",
    "Decimalish",
    "ProducerCallError",
    "ProducerClient",
    "RetryPolicy",
    "SideLike",
    "SignalOptions",
    "channel_options",
    "decimal_string",
    "make_quote",
    "parse_side",
    "submit_signal_request",
]
