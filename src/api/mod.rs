//! The socket API: the accept loop, connection caps and deadlines, routes and JSON answers
//! ([`server`]), and who is calling ([`caller`]: peer credentials, executable, systemd unit).

pub mod caller;
pub mod server;
