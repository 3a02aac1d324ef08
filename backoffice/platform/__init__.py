"""What every signalhub server process shares (back office, gateway, worker): settings, the database
engine and schema runner, gRPC serving with its interceptors, authentication, nonces, the secret vault,
wake-up hints, paging, idempotency records, the mapping of domain errors to gRPC status, and service
registration. Nothing here knows a domain concept; domain modules and servicers build on it."""
