//! What the agent writes for others to read: the audit log ([`audit`]; repeated denials
//! collapsed by [`denials`]), token files
//! ([`sink`]) and Prometheus metrics ([`metrics`]).

pub mod audit;
pub mod denials;
pub mod metrics;
pub mod sink;
