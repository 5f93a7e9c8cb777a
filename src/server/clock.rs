//! The wall clock a group leader stamps commands with.
//!
//! For chaos testing only, a node can be told to follow a clock file
//! (`--unsafe-test-clock PATH`) that skews its clock or changes its rate,
//! as a misbehaving NTP daemon or a drifting oscillator would. The file is
//! re-read every [`TEST_CLOCK_POLL`]; its format is one or two
//! `key=value` words, on one line or several:
//!
//! ```text
//! offset_ms=-2500 rate=1.5
//! ```
//!
//! - `offset_ms` (signed, default 0): when it changes, the clock jumps to
//!   real time + `offset_ms`, as a stepped clock does.
//! - `rate` (0 to 100, default 1): how fast the clock runs against real
//!   time from when the file was read. A change of rate alone keeps the
//!   clock continuous: the drift gained so far is kept.
//! - A missing or empty file is the real clock, with no drift kept.
//!
//! So the clock reads `real + offset + (real - t_set) * (rate - 1)`, where
//! `offset` already includes any drift kept over earlier rate changes and
//! `t_set` is when the current rate was read. Reading it costs one atomic
//! load while no test clock is installed.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How often a test clock file is re-read.
pub const TEST_CLOCK_POLL: Duration = Duration::from_millis(50);

/// The fastest a test clock may run against real time.
const TEST_CLOCK_RATE_MAX: f64 = 100.0;

/// Milliseconds since the Unix epoch. A clock set before 1970 reads as 0;
/// the engine's `max(last applied, stamp)` keeps applied time moving
/// forward whatever the clock does.
pub fn now_ms() -> u64 {
    let real = real_ms();
    if !TEST_CLOCK.installed.load(Ordering::Acquire) {
        return real;
    }
    TEST_CLOCK.read(real)
}

fn real_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What a clock file says.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ClockSetting {
    pub offset_ms: i64,
    pub rate: f64,
}

impl ClockSetting {
    pub const REAL: ClockSetting = ClockSetting {
        offset_ms: 0,
        rate: 1.0,
    };

    /// Parses the file's text; empty text is the real clock.
    pub fn parse(text: &str) -> Result<ClockSetting, String> {
        let mut setting = ClockSetting::REAL;
        for word in text.split_whitespace() {
            let (key, value) = word
                .split_once('=')
                .ok_or_else(|| format!("`{word}`: expected key=value"))?;
            match key {
                "offset_ms" => {
                    setting.offset_ms = value
                        .parse()
                        .map_err(|e| format!("offset_ms `{value}`: {e}"))?;
                }
                "rate" => {
                    let rate: f64 = value.parse().map_err(|e| format!("rate `{value}`: {e}"))?;
                    if !(0.0..=TEST_CLOCK_RATE_MAX).contains(&rate) {
                        return Err(format!("rate {rate}: must be 0..={TEST_CLOCK_RATE_MAX}"));
                    }
                    setting.rate = rate;
                }
                other => return Err(format!("unknown key `{other}`")),
            }
        }
        Ok(setting)
    }
}

/// The installed test clock: `offset_ms`, `t_set_ms` and the rate (as f64
/// bits) under a sequence lock, so a reader never mixes two settings.
struct TestClock {
    installed: AtomicBool,
    /// Odd while a writer is updating the fields.
    seq: AtomicU64,
    offset_ms: AtomicI64,
    t_set_ms: AtomicU64,
    rate_bits: AtomicU64,
    /// The last setting read from the file; the writer's own state.
    last: Mutex<Option<ClockSetting>>,
}

static TEST_CLOCK: TestClock = TestClock {
    installed: AtomicBool::new(false),
    seq: AtomicU64::new(0),
    offset_ms: AtomicI64::new(0),
    t_set_ms: AtomicU64::new(0),
    rate_bits: AtomicU64::new(0x3FF0_0000_0000_0000), // 1.0
    last: Mutex::new(None),
};

impl TestClock {
    fn read(&self, real: u64) -> u64 {
        loop {
            let before = self.seq.load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let offset = self.offset_ms.load(Ordering::Acquire);
            let t_set = self.t_set_ms.load(Ordering::Acquire);
            let rate = f64::from_bits(self.rate_bits.load(Ordering::Acquire));
            if self.seq.load(Ordering::Acquire) == before {
                return skewed(real, offset, t_set, rate);
            }
        }
    }

    /// Applies a setting read at real time `real`: an offset change jumps,
    /// a rate change alone keeps the clock continuous.
    fn apply(&self, setting: ClockSetting, real: u64) {
        let mut last = self.last.lock().expect("test clock writer");
        if *last == Some(setting) {
            return;
        }
        let offset = match *last {
            Some(previous) if previous.offset_ms == setting.offset_ms => {
                let now = self.read(real);
                i64::try_from(now).unwrap_or(i64::MAX) - i64::try_from(real).unwrap_or(i64::MAX)
            }
            _ => setting.offset_ms,
        };
        self.seq.fetch_add(1, Ordering::AcqRel);
        self.offset_ms.store(offset, Ordering::Release);
        self.t_set_ms.store(real, Ordering::Release);
        self.rate_bits
            .store(setting.rate.to_bits(), Ordering::Release);
        self.seq.fetch_add(1, Ordering::AcqRel);
        *last = Some(setting);
    }
}

/// `real + offset + (real - t_set) * (rate - 1)`, clamped to `u64`.
fn skewed(real: u64, offset: i64, t_set: u64, rate: f64) -> u64 {
    let drift = (real.saturating_sub(t_set) as f64 * (rate - 1.0)) as i64;
    let ms = i128::from(real) + i128::from(offset) + i128::from(drift);
    u64::try_from(ms.max(0)).unwrap_or(u64::MAX)
}

/// Makes [`now_ms`] follow the clock file at `path` from now on: reads it
/// once before returning, then every [`TEST_CLOCK_POLL`] on a thread of its
/// own. For chaos tests only: a skewed leader stamps skewed times into the
/// log, which is what such a test wants to see survived.
pub fn follow_test_clock(path: &Path) -> Result<(), String> {
    let setting = read_setting(path)?;
    TEST_CLOCK.apply(setting, real_ms());
    TEST_CLOCK.installed.store(true, Ordering::Release);
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("test-clock".into())
        .spawn(move || poll(&path))
        .map_err(|e| format!("starting the test clock thread: {e}"))?;
    Ok(())
}

fn poll(path: &Path) {
    loop {
        std::thread::sleep(TEST_CLOCK_POLL);
        match read_setting(path) {
            Ok(setting) => {
                if setting == ClockSetting::REAL {
                    // Back to real time: no drift is kept.
                    *TEST_CLOCK.last.lock().expect("test clock writer") = None;
                }
                TEST_CLOCK.apply(setting, real_ms());
            }
            Err(error) => tracing::warn!(path = %path.display(), %error, "test clock file"),
        }
    }
}

fn read_setting(path: &Path) -> Result<ClockSetting, String> {
    match std::fs::read_to_string(path) {
        Ok(text) => ClockSetting::parse(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ClockSetting::REAL),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse() {
        assert_eq!(ClockSetting::parse("").unwrap(), ClockSetting::REAL);
        assert_eq!(
            ClockSetting::parse("offset_ms=-2500\nrate=1.5\n").unwrap(),
            ClockSetting {
                offset_ms: -2500,
                rate: 1.5
            }
        );
        assert!(ClockSetting::parse("rate=-1").is_err());
        assert!(ClockSetting::parse("skew=3").is_err());
        assert!(ClockSetting::parse("offset_ms").is_err());
    }

    #[test]
    fn skew_is_offset_plus_drift_since_set() {
        assert_eq!(skewed(10_000, 0, 10_000, 1.0), 10_000);
        assert_eq!(skewed(10_000, -500, 9_000, 1.0), 9_500);
        assert_eq!(skewed(10_000, 0, 9_000, 2.0), 11_000);
        assert_eq!(skewed(10_000, 0, 9_000, 0.5), 9_500);
        assert_eq!(skewed(100, -1_000, 100, 1.0), 0);
    }

    /// A private clock, so the test does not race the process-wide one.
    fn clock() -> TestClock {
        TestClock {
            installed: AtomicBool::new(true),
            seq: AtomicU64::new(0),
            offset_ms: AtomicI64::new(0),
            t_set_ms: AtomicU64::new(0),
            rate_bits: AtomicU64::new(1.0f64.to_bits()),
            last: Mutex::new(None),
        }
    }

    #[test]
    fn rate_changes_are_continuous_and_offset_changes_jump() {
        let c = clock();
        c.apply(ClockSetting::REAL, 1_000);
        assert_eq!(c.read(2_000), 2_000);
        let fast = ClockSetting {
            offset_ms: 0,
            rate: 2.0,
        };
        c.apply(fast, 2_000);
        assert_eq!(c.read(3_000), 4_000);
        // Slowing down keeps the 1000 ms gained.
        c.apply(ClockSetting { rate: 1.0, ..fast }, 3_000);
        assert_eq!(c.read(3_000), 4_000);
        assert_eq!(c.read(5_000), 6_000);
        // A new offset steps the clock, dropping the drift.
        c.apply(
            ClockSetting {
                offset_ms: -100,
                rate: 1.0,
            },
            5_000,
        );
        assert_eq!(c.read(5_000), 4_900);
    }
}
