//! The SVG plots of `p2p-bench swarm`: a grouped bar chart of the time each
//! way took to deliver the file, per (N, F), on a log scale; and one run's
//! timeline, per downloader and per source, from the switch's flow
//! counters.

use crate::case::SwarmCase;

/// Each host of a case's LAN by name, in host order: `index`, `seeder`,
/// then `peer<i>/<class>`.
pub fn host_names(case: &SwarmCase) -> Vec<String> {
    let mut names = vec!["index".to_string(), "seeder".to_string()];
    for (i, class) in case.mix.downloader_classes().iter().enumerate() {
        names.push(format!("peer{i}/{}", class.name));
    }
    names
}

/// One panel per downloader: the MiB it has received from each source
/// over time (one line per source, coloured by the source's class; the
/// seeder black), its total, and a dashed line at its class's bound (its
/// link with TCP framing). `None` when the switch counted no flows.
pub fn timeline_svg(case: &SwarmCase) -> Option<String> {
    let flows = &case.links.as_ref()?.flows;
    let end_s = flows.last()?.0.max(0.1);
    let classes = case.mix.downloader_classes();
    let names = host_names(case);
    let palette = [
        "#2b7bb9", "#d9534f", "#5cb85c", "#f0ad4e", "#8e44ad", "#7f8c8d",
    ];
    let colour = |host: usize| match host {
        1 => "#000000",
        h => {
            let class = &classes[h - 2].name;
            let k = case
                .mix
                .classes
                .iter()
                .position(|c| c.name == *class)
                .unwrap_or(0);
            palette[k % palette.len()]
        }
    };
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let f_mib = mib(case.size_bytes) * 1.05;
    let (panel_w, panel_h, cols) = (300.0, 170.0, 4usize);
    let rows = case.n.div_ceil(cols);
    let width = 20.0 + cols as f64 * (panel_w + 20.0);
    let height = 60.0 + rows as f64 * (panel_h + 50.0);
    let mut svg = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' font-family='sans-serif' font-size='11'>\n<rect width='100%' height='100%' fill='white'/>\n<text x='10' y='18' font-size='13'>MiB each downloader received from each source over time (s): N={}, F={} MiB, ours, run 1</text>\n",
        case.n,
        case.size_bytes >> 20
    );
    let mut legend_x = 10.0;
    let mut legend = vec![("seeder".to_string(), "#000000")];
    for (k, class) in case.mix.classes.iter().enumerate() {
        legend.push((
            format!(
                "from {} ({}/{})",
                class.name, class.down_mbit, class.up_mbit
            ),
            palette[k % palette.len()],
        ));
    }
    for (label, c) in &legend {
        svg += &format!(
            "<rect x='{legend_x}' y='28' width='12' height='12' fill='{c}'/><text x='{}' y='38'>{label}</text>\n",
            legend_x + 16.0
        );
        legend_x += 40.0 + 7.0 * label.len() as f64;
    }
    svg += &format!(
        "<text x='{legend_x}' y='38'>thick grey: total; dashed: the host's link bound</text>\n"
    );
    for to in 2..case.n + 2 {
        let d = to - 2;
        let (x0, y0) = (
            30.0 + (d % cols) as f64 * (panel_w + 20.0),
            70.0 + (d / cols) as f64 * (panel_h + 50.0),
        );
        let x = |t: f64| x0 + panel_w * t / end_s;
        let y = |m: f64| y0 + panel_h - panel_h * m / f_mib;
        let done = case.per_host_s.get(d).copied().unwrap_or(end_s);
        svg += &format!(
            "<rect x='{x0}' y='{y0}' width='{panel_w}' height='{panel_h}' fill='none' stroke='#ccc'/>\n<text x='{x0}' y='{}'>{} done {done:.2} s</text>\n<text x='{x0}' y='{}' fill='#666'>0</text><text x='{}' y='{}' fill='#666' text-anchor='end'>{end_s:.0} s</text><text x='{}' y='{}' fill='#666'>{:.0} MiB</text>\n",
            y0 - 4.0,
            names[to],
            y0 + panel_h + 12.0,
            x0 + panel_w,
            y0 + panel_h + 12.0,
            x0 + 3.0,
            y(mib(case.size_bytes)) + 12.0,
            mib(case.size_bytes),
        );
        let bound = case.mix.class_bound_s(classes[d], case.size_bytes);
        svg += &format!(
            "<line x1='{x0}' y1='{}' x2='{:.1}' y2='{:.1}' stroke='#999' stroke-dasharray='4 3'/>\n",
            y(0.0),
            x(bound.min(end_s)),
            y(mib(case.size_bytes) * bound.min(end_s) / bound),
        );
        let line = |points: Vec<(f64, f64)>, stroke: &str, w: f64, title: &str| {
            let path: Vec<String> = points
                .iter()
                .map(|(t, m)| format!("{:.1},{:.1}", x(*t), y(*m)))
                .collect();
            format!(
                "<polyline points='{}' fill='none' stroke='{stroke}' stroke-width='{w}'><title>{title}</title></polyline>\n",
                path.join(" ")
            )
        };
        let total: Vec<(f64, f64)> = flows
            .iter()
            .map(|(t, m)| (*t, mib(m[to].iter().sum())))
            .collect();
        svg += &line(total, "#bbb", 4.0, &format!("{} total", names[to]));
        for from in 1..case.n + 2 {
            let got = flows.last().map_or(0, |(_, m)| m[to][from]);
            if from == to || mib(got) < 0.5 {
                continue;
            }
            let points = flows.iter().map(|(t, m)| (*t, mib(m[to][from]))).collect();
            svg += &line(
                points,
                colour(from),
                1.2,
                &format!("from {}: {:.1} MiB", names[from], mib(got)),
            );
        }
    }
    Some(svg + "</svg>\n")
}

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
