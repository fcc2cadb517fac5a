//! Human formatting for the `p2p` client: sizes, rates, durations, times,
//! short ids and plain-text tables. Pure functions, so they are unit tested
//! without an agent.

use std::time::Duration;

use chrono::{Local, TimeZone};

/// Length of the abbreviated file ids shown in tables. Twelve hex digits
/// (48 bits) keep prefixes unique in any realistic network, and the agent
/// accepts a unique prefix wherever it takes an id.
pub const SHORT_ID_CHARS: usize = 12;

/// `1536` → `"1.5 KiB"`. Binary units, one decimal above bytes.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// A transfer rate: `bytes(n) + "/s"`, or `"-"` when nothing moves.
pub fn rate(bytes_per_second: u64) -> String {
    if bytes_per_second == 0 {
        "-".to_string()
    } else {
        format!("{}/s", bytes(bytes_per_second))
    }
}

/// A duration as people say it: `"45s"`, `"3m 05s"`, `"2h 10m"`, `"3d 4h"`.
pub fn duration(d: Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 => format!("{}m {:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h {:02}m", secs / 3600, (secs % 3600) / 60),
        _ => format!("{}d {}h", secs / 86400, (secs % 86400) / 3600),
    }
}

/// How long ago `then_ms` was, relative to `now_ms` (Unix milliseconds):
/// `"12s ago"`, `"just now"`, or `"never"` for a zero timestamp.
pub fn ago(then_ms: i64, now_ms: i64) -> String {
    if then_ms <= 0 {
        return "never".to_string();
    }
    let elapsed = now_ms.saturating_sub(then_ms);
    if elapsed < 1000 {
        return "just now".to_string();
    }
    format!("{} ago", duration(Duration::from_millis(elapsed as u64)))
}

/// Unix milliseconds as local wall-clock time, `"2024-05-01 14:03"`.
pub fn local_time(ms: i64) -> String {
    if ms <= 0 {
        return "-".to_string();
    }
    match Local.timestamp_millis_opt(ms).single() {
        Some(t) => t.format("%Y-%m-%d %H:%M").to_string(),
        None => "-".to_string(),
    }
}

/// The first [`SHORT_ID_CHARS`] characters of a file id.
pub fn short_id(id: &str) -> &str {
    match id.char_indices().nth(SHORT_ID_CHARS) {
        Some((end, _)) => &id[..end],
        None => id,
    }
}

/// Share of a file held locally, `"37%"`; `"-"` when nothing is held.
/// Rounds down so `"100%"` only ever means complete.
pub fn percent(have: u64, total: u64) -> String {
    if have == 0 {
        return "-".to_string();
    }
    if total == 0 || have >= total {
        return "100%".to_string();
    }
    format!("{}%", (have as u128 * 100 / total as u128) as u64)
}

/// Column alignment in a [`Table`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A plain-text table with a header row, columns padded to their widest
/// cell and separated by two spaces. Trailing spaces are trimmed so the
/// output diffs cleanly.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    align: Vec<Align>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers and alignments.
    pub fn new(columns: &[(&'static str, Align)]) -> Self {
        Self {
            headers: columns.iter().map(|(h, _)| *h).collect(),
            align: columns.iter().map(|(_, a)| *a).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are blank, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// The table as lines of text, header first.
    pub fn render(&self) -> String {
        let width = |s: &str| s.chars().count();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(width(cell));
            }
        }
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("  ");
                }
                let pad = widths[i] - width(cell);
                match self.align[i] {
                    Align::Left => {
                        line.push_str(cell);
                        line.extend(std::iter::repeat_n(' ', pad));
                    }
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(cell);
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_use_binary_units_with_one_decimal() {
        assert_eq!(bytes(0), "0 B");
        assert_eq!(bytes(1023), "1023 B");
        assert_eq!(bytes(1024), "1.0 KiB");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(bytes(100 * 1024 * 1024 * 1024), "100.0 GiB");
        assert_eq!(bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn rate_is_a_dash_when_idle() {
        assert_eq!(rate(0), "-");
        assert_eq!(rate(2 * 1024 * 1024), "2.0 MiB/s");
    }

    #[test]
    fn durations_read_like_speech() {
        assert_eq!(duration(Duration::from_secs(0)), "0s");
        assert_eq!(duration(Duration::from_secs(45)), "45s");
        assert_eq!(duration(Duration::from_secs(185)), "3m 05s");
        assert_eq!(duration(Duration::from_secs(2 * 3600 + 10 * 60)), "2h 10m");
        assert_eq!(duration(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d 4h");
    }

    #[test]
    fn ago_handles_never_and_now() {
        assert_eq!(ago(0, 10_000), "never");
        assert_eq!(ago(9_500, 10_000), "just now");
        assert_eq!(ago(1_000, 13_000), "12s ago");
        assert_eq!(ago(20_000, 10_000), "just now");
    }

    #[test]
    fn local_time_has_minutes_and_survives_nonsense() {
        let shown = local_time(1_714_572_180_000);
        assert_eq!(shown.len(), "2024-05-01 14:03".len());
        assert!(shown.starts_with("2024-05-0"));
        assert_eq!(local_time(0), "-");
        assert_eq!(local_time(i64::MAX), "-");
    }

    #[test]
    fn short_id_keeps_twelve_characters() {
        assert_eq!(short_id("0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
        assert_eq!(short_id(""), "");
    }

    #[test]
    fn percent_rounds_down_and_dashes_nothing() {
        assert_eq!(percent(0, 100), "-");
        assert_eq!(percent(37, 100), "37%");
        assert_eq!(percent(999, 1000), "99%");
        assert_eq!(percent(1000, 1000), "100%");
        assert_eq!(percent(u64::MAX - 1, u64::MAX), "99%");
    }

    #[test]
    fn table_pads_columns_and_trims_line_ends() {
        let mut table = Table::new(&[("NAME", Align::Left), ("SIZE", Align::Right)]);
        table.row(vec!["a-long-name.iso".into(), "1.0 GiB".into()]);
        table.row(vec!["b".into(), "5 B".into()]);
        assert_eq!(
            table.render(),
            "NAME                SIZE\n\
             a-long-name.iso  1.0 GiB\n\
             b                    5 B\n"
        );
    }

    #[test]
    fn table_counts_characters_not_bytes() {
        let mut table = Table::new(&[("NAME", Align::Left), ("X", Align::Left)]);
        table.row(vec!["résumé".into(), "1".into()]);
        let rendered = table.render();
        let lines: Vec<&str> = rendered.lines().collect();
        assert_eq!(lines[0], "NAME    X");
        assert_eq!(lines[1], "résumé  1");
    }

    #[test]
    fn table_fills_missing_cells() {
        let mut table = Table::new(&[("A", Align::Left), ("B", Align::Left)]);
        table.row(vec!["x".into()]);
        assert_eq!(table.render(), "A  B\nx\n");
    }
}
