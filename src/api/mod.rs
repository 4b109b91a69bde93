//! The socket API. Who is calling is attested by [`crate::caller`] once per connection; then:
//!
//! | file | owns |
//! | --- | --- |
//! | [`conn`] | one connection: its own HTTP/1.1 loop answering `GET /v1/token`, hyper for every other request |
//! | [`server`] | the accept loop on the Unix socket (and the optional TCP `/metrics` listener), deadlines, graceful stop |
//! | [`limits`] | connection caps per process, per uid and in all; refusals |
//! | [`routes`] | each endpoint, strict parsing of token requests, head and body limits |
//! | [`people`] | sign-in, sessions and whoami for the calling uid (SPEC section 8) |
//! | [`responses`] | JSON answers, errors, and the rendering of a granted token |

mod conn;
pub mod limits;
mod people;
mod responses;
pub mod routes;
pub mod server;
