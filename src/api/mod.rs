//! The socket API: the accept loop, connection caps and deadlines, routes and JSON answers
//! ([`server`]). Who is calling is attested by [`crate::caller`] for every connection.

pub mod server;
