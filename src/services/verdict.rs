//! How the service scenarios collect what went wrong and turn it into their result.

use alloc::string::String;
use alloc::vec::Vec;

/// Appends `what` to `failures` unless `ok`.
pub(super) fn check(failures: &mut Vec<String>, ok: bool, what: String) {
    if !ok {
        failures.push(what);
    }
}

/// The scenario's result: `Ok` without failures, else every failure in one message.
pub(super) fn verdict(failures: Vec<String>) -> Result<(), String> {
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}
