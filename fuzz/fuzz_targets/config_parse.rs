//! `cortexid::config::parse` on arbitrary text: errors with lines, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use cortexid::config::LoadContext;
use libfuzzer_sys::fuzz_target;

/// No environment, no user database: only the parser and the validation run.
struct Fixed;

impl LoadContext for Fixed {
    fn credentials_directory(&self) -> Option<PathBuf> {
        Some(PathBuf::from("/nonexistent/credentials"))
    }
    fn under_systemd(&self) -> bool {
        false
    }
    fn uid_of_user(&self, name: &str) -> Option<u32> {
        (name == "payments").then_some(1001)
    }
    fn gid_of_group(&self, name: &str) -> Option<u32> {
        (name == "payments").then_some(1001)
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = cortexid::config::parse(text, Path::new("fuzz.toml"), &Fixed) {
            // Rendering the problems must not panic either (line lookups, key paths).
            let _ = e.to_string();
        }
    }
});
