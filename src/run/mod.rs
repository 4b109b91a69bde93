//! Running as a daemon: start, reload and stop ([`daemon`]), systemd integration ([`systemd`]:
//! notify, socket activation), the watchdog ([`watchdog`]) and logging ([`logging`]).

pub mod daemon;
mod error;
pub(crate) mod logging;
pub mod systemd;
mod watchdog;

pub use error::ReloadError;
pub use error::StartError;
