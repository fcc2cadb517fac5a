//! The SVG plot of `p2p-bench swarm`: a grouped bar chart of the time each
//! way took to deliver the file, per (N, F), on a log scale.

use crate::case::SwarmCase;

/// A grouped bar chart per (N, F): ours, aria2, the raw TCP mesh, HTTP, the
/// P2P bound and the client-server bound (the median run of each case).
pub fn swarm_svg(cases: &[&SwarmCase], rate_mbit: u32) -> String {
    let max = cases
        .iter()
        .flat_map(|c| {
            [
                c.ours_s,
                c.bt.as_ref().map_or(0.0, |b| b.time_s),
                c.mesh.as_ref().map_or(0.0, |m| m.time_s),
                c.http_s.unwrap_or(0.0),
                c.cs_bound_s,
                c.p2p_bound_s,
            ]
        })
        .fold(1.0, f64::max);
    let group_w = 182.0;
    let height = 360.0;
    let plot_h = 260.0;
    let colors = [
        ("ours", "#2b7bb9"),
        ("aria2", "#8e44ad"),
        ("raw TCP mesh", "#7f8c8d"),
        ("HTTP", "#d9534f"),
        ("P2P bound", "#5cb85c"),
        ("C-S bound", "#f0ad4e"),
    ];
    // Wide enough for the legend too, which takes 100 px an entry.
    let width = (80.0 + group_w * cases.len() as f64).max(80.0 + 100.0 * colors.len() as f64);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='10' y='16' font-size='13'>Time to deliver F to all N downloaders (s, log scale), {rate_mbit} Mbit/s links</text>\n"
    );
    let y = |v: f64| {
        30.0 + plot_h - plot_h * (v.max(0.1).ln() - 0.1f64.ln()) / (max.ln() - 0.1f64.ln())
    };
    for (i, c) in cases.iter().enumerate() {
        let x0 = 60.0 + group_w * i as f64;
        let values = [
            Some(c.ours_s),
            c.bt.as_ref().map(|b| b.time_s),
            c.mesh.as_ref().map(|m| m.time_s),
            c.http_s,
            Some(c.p2p_bound_s),
            Some(c.cs_bound_s),
        ];
        for (j, v) in values.iter().enumerate() {
            if let Some(v) = v {
                let top = y(*v);
                svg += &format!(
                    "<rect x='{:.1}' y='{top:.1}' width='24' height='{:.1}' fill='{}'><title>{} {v:.2}s</title></rect>\n",
                    x0 + 26.0 * j as f64,
                    30.0 + plot_h - top,
                    colors[j].1,
                    colors[j].0
                );
            }
        }
        svg += &format!(
            "<text x='{:.1}' y='{:.1}'>N={} F={}MiB</text>\n<text x='{:.1}' y='{:.1}'>{:.2}x bound</text>\n",
            x0,
            30.0 + plot_h + 16.0,
            c.n,
            c.size_bytes >> 20,
            x0,
            30.0 + plot_h + 30.0,
            c.ours_s / c.p2p_bound_s
        );
    }
    for (j, (name, color)) in colors.iter().enumerate() {
        let x = 60.0 + 100.0 * j as f64;
        svg += &format!(
            "<rect x='{x}' y='{}' width='12' height='12' fill='{color}'/><text x='{}' y='{}'>{name}</text>\n",
            height - 30.0,
            x + 16.0,
            height - 20.0
        );
    }
    svg + "</svg>\n"
}
