//! Small helpers shared by the command line and the API: durations and dates as people write
//! and read them.

use anyhow::{Context, Result};

/// Unix time as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn date(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

/// "90s", "10m", "2h", "7d", or plain seconds.
pub fn parse_duration(s: &str) -> Result<u64> {
    let s = s.trim();
    let (n, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        Some('d') => (&s[..s.len() - 1], 86400),
        Some('y') => (&s[..s.len() - 1], 365 * 86400),
        _ => (s, 1),
    };
    let n: u64 = n
        .parse()
        .with_context(|| format!("invalid duration {s:?} (use e.g. 90s, 10m, 2h, 7d)"))?;
    n.checked_mul(mult)
        .with_context(|| format!("duration {s:?} is too long"))
}
