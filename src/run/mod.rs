//! Running as a daemon: start, reload and stop ([`daemon`]), systemd integration ([`systemd`]:
//! notify, watchdog, socket activation) and logging ([`logging`]).

pub mod daemon;
pub mod logging;
pub mod systemd;
