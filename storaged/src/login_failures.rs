//! Failed logins are audited, but a caller without an account must not be able to make the
//! daemon write without bound: per minute, each name's first few failures are audited one by
//! one and at most a few hundred names are; the rest are counted, and the count is audited
//! with the first failure of the next minute. Names reach this module only once they are
//! well-formed (at most 64 bytes, `ops::names::check_principal_name`).

use std::collections::HashMap;
use std::sync::Mutex;

use crate::meta::Time;

const WINDOW_NANOS: Time = 60_000_000_000;
/// Failures of one name audited one by one in a window.
const PER_NAME_MAX: u32 = 3;
/// Names whose failures are audited one by one in a window.
const NAMES_MAX: usize = 256;

#[derive(Debug, Default)]
pub struct FailedLogins {
    window: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    started: Time,
    per_name: HashMap<String, u32>,
    suppressed: u64,
}

impl FailedLogins {
    /// The audit details to write for one more failure of `name` for `reason`: none when this
    /// window's share is spent; first, the count of the last window's unaudited failures when
    /// a new window begins.
    pub fn note(&self, name: &str, reason: &str, now: Time) -> Vec<String> {
        let mut window = self.window.lock().expect("failed-login window poisoned");
        let mut details = Vec::new();
        if now - window.started >= WINDOW_NANOS || now < window.started {
            if window.suppressed > 0 {
                details.push(format!(
                    "{} more failed logins in the minute before, not audited one by one",
                    window.suppressed
                ));
            }
            *window = Window {
                started: now,
                ..Window::default()
            };
        }
        let names = window.per_name.len();
        match window.per_name.get_mut(name) {
            Some(count) if *count < PER_NAME_MAX => *count += 1,
            None if names < NAMES_MAX => {
                window.per_name.insert(name.to_string(), 1);
            }
            _ => {
                window.suppressed += 1;
                return details;
            }
        }
        details.push(format!("{name}: {reason}"));
        details
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_audited_a_few_times_then_counted() {
        let failures = FailedLogins::default();
        let audited: usize = (0..100)
            .map(|_| failures.note("alice", "bad signature", 1).len())
            .sum();
        assert_eq!(audited, PER_NAME_MAX as usize);
        let many: usize = (0..1000)
            .map(|i| failures.note(&format!("u{i}"), "no such user", 2).len())
            .sum();
        assert_eq!(many, NAMES_MAX - 1);
        let next = failures.note("alice", "bad signature", 1 + WINDOW_NANOS);
        let suppressed = 100 - PER_NAME_MAX as usize + 1000 - (NAMES_MAX - 1);
        assert_eq!(next.len(), 2, "{next:?}");
        assert!(
            next[0].starts_with(&format!("{suppressed} more")),
            "{next:?}"
        );
        assert_eq!(next[1], "alice: bad signature");
    }
}
