//! The SuperNode's own metrics (see the README's table), recorded where things happen: Fleet
//! calls and their retries, the connection to the SuperLink, messages handled, ClientApps.

/// Describes the SuperNode's metrics (once the recorder is installed).
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_histogram!(
        "flwr_fleet_call_duration_seconds",
        Unit::Seconds,
        "Fleet API calls to the SuperLink (each attempt), by method and gRPC status code"
    );
    describe_counter!(
        "flwr_fleet_retries_total",
        "Fleet API calls tried again, by method and reason (connection: the SuperLink was not reached; server: it failed)"
    );
    describe_gauge!(
        "flwr_superlink_reachable",
        "1 when the last Fleet API call reached the SuperLink, 0 when it did not"
    );
    describe_counter!(
        "flwr_messages_handled_total",
        "Instructions handled, by outcome (replied; error_reply: answered with an error; ignored: its run was not running; failed)"
    );
    describe_histogram!(
        "flwr_message_handling_seconds",
        Unit::Seconds,
        "From an instruction's arrival to its reply pushed (the ClientApp's work included)"
    );
    describe_counter!(
        "flwr_clientapp_launches_total",
        "ClientApp processes this SuperNode launched (isolation subprocess), by outcome (started, not_started)"
    );
    describe_histogram!(
        "flwr_clientapp_duration_seconds",
        Unit::Seconds,
        "From a ClientApp's launch (isolation subprocess) to the reply to its message"
    );
    describe_counter!(
        "flwr_held_pulls_total",
        "Pulls the SuperLink held until an instruction came or its hold ended (our SuperLink; Flower's answers at once, and then the node polls every second)"
    );
    describe_counter!(
        "flwr_clientapp_crashes_total",
        "Instructions answered CLIENT_APP_CRASHED (the ClientApp exited without replying or stopped responding)"
    );
}
