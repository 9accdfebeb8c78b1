//! Time from the caller: the clients never read a clock of their own.

use qmp_proto::Instant;

/// The caller's monotonic clock, read whenever a client checks its deadlines.
///
/// Any `Fn() -> Instant` closure is a clock, so a hardware timer or a test's fake time is
/// one line:
///
/// ```
/// use qmp_proto::Instant;
/// use qmp_embedded::Clock;
///
/// let ticks = core::cell::Cell::new(0u64); // e.g. a SysTick counter in milliseconds
/// let clock = || Instant::from_millis(ticks.get());
/// ticks.set(1500);
/// assert_eq!(clock.now(), Instant::from_millis(1500));
/// ```
pub trait Clock {
    /// The time now. It must never go backwards; the origin is the caller's choice.
    fn now(&self) -> Instant;
}

impl<F: Fn() -> Instant> Clock for F {
    fn now(&self) -> Instant {
        self()
    }
}
