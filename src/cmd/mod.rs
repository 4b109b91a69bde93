//! The command line's work: the subcommands ([`cli`]), the socket client they use ([`client`]),
//! `cortexid doctor` ([`doctor`]) and `cortexid dev` ([`dev`]).

pub mod cli;
pub mod client;
pub mod dev;
pub mod doctor;
