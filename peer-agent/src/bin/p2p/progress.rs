//! Progress bars on stderr for hashing and downloading. When bars are off
//! (not a terminal, or `--json`) every method is a no-op, so commands call
//! them unconditionally.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress bar, or nothing.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar for hashing `path` before it is shared.
    pub fn hashing(enabled: bool, path: &str) -> Self {
        Self::new(
            enabled,
            "{prefix} [{wide_bar}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
            format!("hashing {path}"),
        )
    }

    /// A bar for downloading `file`; rate, ETA and sources come from the
    /// agent in the message, since the agent measures them.
    pub fn downloading(enabled: bool, file: &str) -> Self {
        Self::new(
            enabled,
            "{prefix} [{wide_bar}] {bytes}/{total_bytes}  {msg}",
            file.to_string(),
        )
    }

    fn new(enabled: bool, template: &str, prefix: String) -> Self {
        if !enabled {
            return Self { bar: None };
        }
        let style = ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_prefix(prefix);
        Self { bar: Some(bar) }
    }

    /// Moves the bar to `done` of `total`, with an optional message.
    pub fn update(&self, done: u64, total: u64, message: Option<String>) {
        if let Some(bar) = &self.bar {
            bar.set_length(total);
            bar.set_position(done);
            if let Some(message) = message {
                bar.set_message(message);
            }
        }
    }

    /// Removes the bar so the result line prints cleanly.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
