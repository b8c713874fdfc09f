//! The `vigil` binary, the way a user drives it, through the shared harness (on failure it
//! prints the command line, its directory, exit status, stdout and stderr):
//!
//! - [`offline`]: generate a history, train, inspect, evaluate, export features, run the demo,
//!   and refuse broken inputs with a clear message.
//! - [`grpc`]: `vigil serve --no-kafka` on port 0, `vigil score` against it (argument, stdin,
//!   refusals, tokens), flag errors naming the flag, a clean stop on SIGTERM, and the demo's
//!   gRPC API next to its Kafka path.
//! - [`serve`]: one server for every mode (HTTP endpoints, gRPC verdict metrics and SIGHUP
//!   reloads without Kafka), one configuration (`[grpc]`, `VIGIL_<SECTION>__<KEY>`, redacted
//!   `config show`), no panic on a closed stdout, default paths named.

#[path = "../support/mod.rs"]
mod support;

mod grpc;
mod offline;
mod serve;
