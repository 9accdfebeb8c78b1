//! The clock for deadlines: the time-stamp counter, calibrated against
//! channel 2 of the PIT (the 8254 timer, 1.193182 MHz), whose output the
//! guest can read on port 0x61 without interrupts.

use qmp_embedded::Instant;

use crate::hw;

/// The PIT's input clock, in Hz.
const PIT_HZ: u64 = 1_193_182;
/// The calibration interval: 11932 PIT ticks, 10 ms.
const CALIBRATION_TICKS: u16 = 11_932;
/// Microseconds in the calibration interval (rounded).
const CALIBRATION_US: u64 = CALIBRATION_TICKS as u64 * 1_000_000 / PIT_HZ;
/// TSC ticks per microsecond to assume if the PIT never answers.
const FALLBACK_TICKS_PER_US: u64 = 1000;
/// How many TSC ticks the calibration waits for the PIT at most (seconds on
/// any machine).
const CALIBRATION_LIMIT: u64 = 1 << 34;

/// Microseconds since [`Clock::calibrate`], from the TSC.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: u64,
    ticks_per_us: u64,
}

impl Clock {
    /// Measures the TSC's rate over 10 ms of the PIT's channel 2 (one-shot,
    /// mode 0, its gate on and the speaker off), and starts the clock at 0.
    /// The measurement is taken twice and the second one kept: under QEMU's
    /// TCG the first run also pays for translating the loop.
    pub fn calibrate() -> Self {
        measure();
        Self {
            ticks_per_us: measure(),
            origin: hw::rdtsc(),
        }
    }

    /// TSC ticks per microsecond: the CPU's clock in MHz.
    pub fn mhz(&self) -> u64 {
        self.ticks_per_us
    }

    /// Microseconds since the calibration.
    pub fn micros(&self) -> u64 {
        hw::rdtsc().wrapping_sub(self.origin) / self.ticks_per_us
    }
}

impl qmp_embedded::Clock for Clock {
    fn now(&self) -> Instant {
        Instant::from_micros(self.micros())
    }
}

/// TSC ticks per microsecond over one run of the PIT's channel 2.
fn measure() -> u64 {
    let gate = hw::inb(0x61);
    hw::outb(0x61, (gate & !0x02) | 0x01);
    hw::outb(0x43, 0xb0); // channel 2, low then high byte, mode 0, binary
    let [low, high] = CALIBRATION_TICKS.to_le_bytes();
    hw::outb(0x42, low);
    hw::outb(0x42, high);
    let start = hw::rdtsc();
    let mut elapsed = 0;
    while hw::inb(0x61) & 0x20 == 0 && elapsed < CALIBRATION_LIMIT {
        elapsed = hw::rdtsc().wrapping_sub(start);
    }
    if elapsed < CALIBRATION_LIMIT {
        (elapsed / CALIBRATION_US).max(1)
    } else {
        FALLBACK_TICKS_PER_US
    }
}
