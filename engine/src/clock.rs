//! The engine's clock. The domain never reads time itself: the shell reads a `Clock` and
//! passes `now` into `decide`, and the decision time is recorded in the event, so replay
//! never consults a clock. Tests use `ManualClock` and never sleep.

use crate::ids::Millis;
use std::sync::atomic::{AtomicI64, Ordering};

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> Millis;
}

/// Wall-clock time from the operating system.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        let since_epoch = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Millis(i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX))
    }
}

/// A clock that moves only when told to; it may be set backwards to test clock jumps.
#[derive(Debug, Default)]
pub struct ManualClock {
    now_ms: AtomicI64,
}

impl ManualClock {
    pub fn new(start: Millis) -> Self {
        Self { now_ms: AtomicI64::new(start.0) }
    }
    pub fn advance_ms(&self, ms: i64) {
        self.now_ms.fetch_add(ms, Ordering::SeqCst);
    }
    pub fn set(&self, now: Millis) {
        self.now_ms.store(now.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        Millis(self.now_ms.load(Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(Millis(1_000));
        assert_eq!(clock.now(), Millis(1_000));
        clock.advance_ms(500);
        assert_eq!(clock.now(), Millis(1_500));
        clock.set(Millis(10));
        assert_eq!(clock.now(), Millis(10));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now().0 > 1_577_836_800_000);
    }
}
