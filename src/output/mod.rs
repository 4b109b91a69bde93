//! What the agent writes for others to read: the audit log ([`audit`]; repeated denials
//! collapsed by [`denials`]; the file written without a lock by `append`), token files ([`sink`])
//! and Prometheus metrics ([`metrics`]).

mod append;
pub mod audit;
pub mod denials;
pub mod metrics;
pub mod sink;
