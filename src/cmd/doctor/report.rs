//! The doctor's report: one line per step, `ok`, `FAIL` (with its likely cause and the fix) or
//! `--` (a note), under a heading per provider and per identity.

use std::fmt::Display;

/// A step that works.
pub(super) fn ok(step: &str, detail: impl Display) {
    println!("  ok    {step}: {detail}");
}

/// A step that fails: what went wrong, its likely cause, and how to fix it.
pub(super) fn fail(step: &str, problem: impl Display, cause: impl Display, fix: impl Display) {
    println!("  FAIL  {step}: {problem}");
    println!("        cause: {cause}");
    println!("        fix:   {fix}");
}

/// A step that was skipped or cannot be judged.
pub(super) fn note(step: &str, detail: impl Display) {
    println!("  --    {step}: {detail}");
}
