//! What the agent writes for others to read: the audit log ([`audit`]), token files
//! ([`sink`]) and Prometheus metrics ([`metrics`]).

pub mod audit;
pub mod metrics;
pub mod sink;
