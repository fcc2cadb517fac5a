//! Medians and ranges of measured figures, and how a range is printed.

/// The middle value (the upper one of an even count); `None` when empty.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied()
}

/// Median and range of some figures.
#[derive(Clone, Copy, serde::Serialize)]
pub struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    /// Of the finite `values` (the median of an even count is the mean of
    /// the two middle ones); `None` when there are none.
    pub fn of(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let mut v: Vec<f64> = values.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Self {
            median,
            min: v[0],
            max: v[v.len() - 1],
        })
    }

    /// The median.
    pub fn median(self) -> f64 {
        self.median
    }

    /// `median (min-max)` with `digits` decimals, the median alone when
    /// the range is empty, `-` when there is nothing.
    pub fn show(this: Option<Self>, digits: usize) -> String {
        match this {
            None => "-".into(),
            Some(s) if s.max - s.min < 1e-9 => format!("{:.digits$}", s.median),
            Some(s) => format!(
                "{:.digits$} ({:.digits$}-{:.digits$})",
                s.median, s.min, s.max
            ),
        }
    }
}
