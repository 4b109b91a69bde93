//! What the agent writes for others to read: the audit log ([`audit`]; repeated denials
//! collapsed by [`denials`]; `token.issued` lines written in batches by `group_commit`), token files
//! ([`sink`]) and Prometheus metrics ([`metrics`]).

pub mod audit;
pub mod denials;
mod group_commit;
pub mod metrics;
pub mod sink;
