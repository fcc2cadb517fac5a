//! What `p2p-bench swarm` prints and writes: a table row per run as it
//! finishes, the median (range) table over the runs of each case, and the
//! result files `<base>.json` (every run and the summaries), `<base>.csv`
//! (one row per run), `<base>.timeline.csv` (the links during each case's
//! first run), `<base>.flows.csv` (who sent each host how much, over that
//! run), `<base>.svg` and `<base>.N<n>-<F>MiB.timeline.svg` (drawn by
//! `plot`).

use std::path::Path;

use anyhow::Result;

use crate::case::{AgentEnv, SwarmCase, SwarmPlan};
use crate::links::{LinkUse, LoadedRtt};
use crate::plot::{host_names, swarm_svg, timeline_svg};
use crate::stats::Spread;

/// The table of runs, printed a row at a time as each run finishes, and
/// the links' timeline of each case's first run, kept for
/// `<base>.timeline.csv`.
pub struct RunTable {
    timeline: String,
    flows: String,
}

impl RunTable {
    /// Prints the table's header.
    pub fn start() -> Self {
        let timeline = String::from(
            "n,size_mib,t_s,seeder_sent_mbit_s,downloaders_received_mbit_s_mean,downloaders_received_mbit_s_min\n",
        );
        println!(
            "{:>3} {:>8} {:>4} {:>9} {:>9} {:>9} {:>9} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>7} {:>8} {:>9} {:>9} {:>8} {:>8}",
            "N",
            "F (MiB)",
            "run",
            "ours (s)",
            "aria2 (s)",
            "HTTP (s)",
            "ours/P2P",
            "seeder up",
            "idx rq/s",
            "CPU s/GiB",
            "user s/GiB",
            "aria2 s/GiB",
            "aria2 user",
            "tail (s)",
            "CPU",
            "RSS max",
            "1st chunk",
            "seed busy",
            "seed use",
            "starved"
        );
        let flows = String::from("n,size_mib,t_s,to,from,bytes\n");
        Self { timeline, flows }
    }

    /// Prints the row of run `run` (from 0) of a case of `size_mib`, with
    /// its round-trip times and the raw TCP mesh's result.
    pub fn row(&mut self, case: &SwarmCase, size_mib: u64, run: usize) {
        let n = case.n;
        let tail = tail_s(case).unwrap_or(0.0);
        println!(
            "{:>3} {:>8} {:>4} {:>9.2} {:>9} {:>9} {:>9.3} {:>9.3}F {:>8} {:>9.2} {:>9.2} {:>9} {:>9} {:>9.2} {:>6.0}% {:>5.0}MiB {:>9} {:>9} {:>8} {:>8}",
            case.n,
            size_mib,
            run + 1,
            case.ours_s,
            case.bt
                .as_ref()
                .map_or("-".into(), |b| format!("{:.2}", b.time_s)),
            case.http_s.map_or("-".into(), |s| format!("{s:.2}")),
            case.ours_s / case.p2p_bound_s,
            case.seeder_upload_multiple,
            case.index_rps_per_downloader
                .map_or("-".into(), |r| format!("{r:.2}")),
            case.agents_cpu_s_per_gib,
            case.agents_user_s_per_gib,
            case.bt
                .as_ref()
                .map_or("-".into(), |b| format!("{:.2}", b.cpu_s_per_gib)),
            case.bt
                .as_ref()
                .map_or("-".into(), |b| format!("{:.2}", b.user_s_per_gib)),
            tail,
            case.cpu_busy_swarm.unwrap_or(0.0) * 100.0,
            case.max_agent_rss_bytes as f64 / 1048576.0,
            links_cell(case, |l| l.first_chunk_s, 2),
            links_cell(case, |l| l.seeder_busy_s, 2),
            links_cell(case, |l| l.seeder_link_use, 3),
            links_cell(case, |l| l.starved_s, 2),
        );
        let rtt_cell = |r: Option<&LoadedRtt>| {
            r.map_or("-".to_string(), |r| {
                let ms = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.2}"));
                format!(
                    "seeder {} (min {}), downloader {} (min {})",
                    ms(r.seeder_srtt_ms),
                    ms(r.seeder_min_rtt_ms),
                    ms(r.downloader_srtt_ms),
                    ms(r.downloader_min_rtt_ms)
                )
            })
        };
        println!(
            "    RTT on the bulk connections mid-transfer (ms): ours {}; aria2 {}; raw mesh {}",
            rtt_cell(case.loaded_rtt.as_ref()),
            rtt_cell(case.bt.as_ref().and_then(|b| b.loaded_rtt.as_ref())),
            rtt_cell(case.mesh.as_ref().and_then(|m| m.loaded_rtt.as_ref()))
        );
        if let Some(why) = &case.mesh_failed {
            println!("    raw TCP mesh: failed: {why}");
        }
        if let Some(m) = &case.mesh {
            println!(
                "    raw TCP mesh: {:.2} s ({:.3} x the bound), CPU {:.2} s/GiB, user {:.2} s/GiB",
                m.time_s,
                m.time_s / case.p2p_bound_s,
                m.cpu_s_per_gib,
                m.user_s_per_gib
            );
        }
        for class in &case.mix.classes {
            let bound = case.mix.class_bound_s(class, case.size_bytes);
            let cell = |per_host: Option<&[f64]>| {
                per_host
                    .and_then(|t| {
                        let slowest = case.mix.slowest_per_class(t, case.size_bytes);
                        slowest.into_iter().find(|(name, ..)| *name == class.name)
                    })
                    .map_or("-".into(), |(_, s, x)| format!("{s:.2} s ({x:.2} x)"))
            };
            println!(
                "    class {} ({} x {}/{} Mbit/s, bound {bound:.2} s), slowest host: ours {}; aria2 {}; raw mesh {}",
                class.name,
                class.count,
                class.down_mbit,
                class.up_mbit,
                cell(Some(&case.per_host_s)),
                cell(case.bt.as_ref().map(|b| b.per_host_s.as_slice())),
                cell(case.mesh.as_ref().map(|m| m.per_host_s.as_slice())),
            );
        }
        if run == 0
            && let Some(links) = &case.links
        {
            for (t, seeder, mean, min) in &links.timeline {
                self.timeline.push_str(&format!(
                    "{n},{size_mib},{t:.2},{seeder:.1},{mean:.1},{min:.1}\n"
                ));
            }
            let names = host_names(case);
            for (t, flows) in &links.flows {
                for (to, from_all) in flows.iter().enumerate() {
                    for (from, bytes) in from_all.iter().enumerate().filter(|(_, b)| **b > 0) {
                        self.flows.push_str(&format!(
                            "{n},{size_mib},{t:.2},{},{},{bytes}\n",
                            names[to], names[from]
                        ));
                    }
                }
            }
        }
    }
}

/// One [`LinkUse`] figure of a run for the table, `-` when not measured.
fn links_cell(case: &SwarmCase, f: impl Fn(&LinkUse) -> f64, digits: usize) -> String {
    case.links
        .as_ref()
        .map_or("-".into(), |l| format!("{:.*}", digits, f(l)))
}

/// How much longer the last downloader took than the median one.
fn tail_s(case: &SwarmCase) -> Option<f64> {
    let mut t = case.per_host_s.clone();
    t.sort_by(f64::total_cmp);
    Some(t.last()? - t.get(t.len() / 2)?)
}

/// Prints the median (range) table over the runs of each case and writes
/// the result files next to `base`.
pub fn write(base: &Path, plan: &SwarmPlan, cases: &[SwarmCase], table: RunTable) -> Result<()> {
    let (rate_mbit, delay_ms) = (plan.rate_mbit, plan.delay_ms);
    let mut summaries: Vec<CaseSummary> = Vec::new();
    for c in cases {
        match summaries
            .iter_mut()
            .find(|s| s.runs[0].n == c.n && s.runs[0].size_bytes == c.size_bytes)
        {
            Some(s) => s.runs.push(c),
            None => summaries.push(CaseSummary { runs: vec![c] }),
        }
    }
    println!("\nmedian (range) of {} run(s):", plan.runs);
    println!(
        "| N | F | ours (s) | ours / bound | seeder upload (F) | index req / downloader / s | agents CPU s / GiB | agents user s / GiB | last - median (s) | aria2 (s) | aria2 / bound | aria2 CPU s / GiB | aria2 user s / GiB | raw mesh (s) | raw mesh / bound | raw mesh CPU s / GiB | raw mesh user s / GiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &summaries {
        let c = s.runs[0];
        println!(
            "| {} | {} MiB | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.n,
            c.size_bytes >> 20,
            Spread::show(s.spread(|c| Some(c.ours_s)), 2),
            Spread::show(s.spread(|c| Some(c.ours_s / c.p2p_bound_s)), 2),
            Spread::show(s.spread(|c| Some(c.seeder_upload_multiple)), 3),
            Spread::show(s.spread(|c| c.index_rps_per_downloader), 2),
            Spread::show(s.spread(|c| Some(c.agents_cpu_s_per_gib)), 1),
            Spread::show(s.spread(|c| Some(c.agents_user_s_per_gib)), 1),
            Spread::show(s.spread(tail_s), 2),
            Spread::show(s.spread(|c| c.bt.as_ref().map(|b| b.time_s)), 2),
            Spread::show(
                s.spread(|c| c.bt.as_ref().map(|b| b.time_s / c.p2p_bound_s)),
                2
            ),
            Spread::show(s.spread(|c| c.bt.as_ref().map(|b| b.cpu_s_per_gib)), 1),
            Spread::show(s.spread(|c| c.bt.as_ref().map(|b| b.user_s_per_gib)), 1),
            Spread::show(s.spread(|c| c.mesh.as_ref().map(|m| m.time_s)), 2),
            Spread::show(
                s.spread(|c| c.mesh.as_ref().map(|m| m.time_s / c.p2p_bound_s)),
                2
            ),
            Spread::show(s.spread(|c| c.mesh.as_ref().map(|m| m.cpu_s_per_gib)), 1),
            Spread::show(s.spread(|c| c.mesh.as_ref().map(|m| m.user_s_per_gib)), 1),
        );
    }
    println!(
        "\neach class's slowest host, median (range) of {} run(s):",
        plan.runs
    );
    println!(
        "| N | F | class | hosts | down/up (Mbit/s) | bound (s) | ours (s) | ours / bound | aria2 (s) | aria2 / bound | raw mesh (s) | raw mesh / bound |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for s in &summaries {
        let c = s.runs[0];
        for class in &c.mix.classes {
            let of = |per_host: &[f64], which: usize| {
                c.mix
                    .slowest_per_class(per_host, c.size_bytes)
                    .into_iter()
                    .find(|(name, ..)| *name == class.name)
                    .map(|(_, t, x)| if which == 0 { t } else { x })
            };
            let ours = |w| s.spread(|c| of(&c.per_host_s, w));
            let bt = |w| s.spread(|c| c.bt.as_ref().and_then(|b| of(&b.per_host_s, w)));
            let mesh = |w| s.spread(|c| c.mesh.as_ref().and_then(|m| of(&m.per_host_s, w)));
            println!(
                "| {} | {} MiB | {} | {} | {}/{} | {:.2} | {} | {} | {} | {} | {} | {} |",
                c.n,
                c.size_bytes >> 20,
                class.name,
                class.count,
                class.down_mbit,
                class.up_mbit,
                c.mix.class_bound_s(class, c.size_bytes),
                Spread::show(ours(0), 2),
                Spread::show(ours(1), 2),
                Spread::show(bt(0), 2),
                Spread::show(bt(1), 2),
                Spread::show(mesh(0), 2),
                Spread::show(mesh(1), 2),
            );
        }
    }
    let runs: Vec<serde_json::Value> = cases
        .iter()
        .map(|c| {
            serde_json::json!({
                "n": c.n, "size_bytes": c.size_bytes, "rate_mbit": rate_mbit, "delay_ms": delay_ms,
                "mix": c.mix,
                "class_bounds_s": c.mix.classes.iter().map(|k| (k.name.clone(), c.mix.class_bound_s(k, c.size_bytes))).collect::<Vec<_>>(),
                "slowest_per_class": {
                    "ours": c.mix.slowest_per_class(&c.per_host_s, c.size_bytes),
                    "aria2": c.bt.as_ref().map(|b| c.mix.slowest_per_class(&b.per_host_s, c.size_bytes)),
                    "raw_mesh": c.mesh.as_ref().map(|m| c.mix.slowest_per_class(&m.per_host_s, c.size_bytes)),
                },
                "ours_s": c.ours_s, "http_s": c.http_s, "p2p_bound_s": c.p2p_bound_s,
                "client_server_bound_s": c.cs_bound_s, "ours_over_p2p_bound": c.ours_s / c.p2p_bound_s,
                "seeder_uploaded_multiple_of_f": c.seeder_upload_multiple,
                "all_uploaded_over_n_f": c.upload_over_needed,
                "cpu_busy_swarm": c.cpu_busy_swarm, "cpu_busy_http": c.cpu_busy_http,
                "index_svc_cpu_s": c.index_cpu_s,
                "index_requests_per_downloader_per_s": c.index_rps_per_downloader,
                "links": c.links,
                "loaded_rtt": c.loaded_rtt,
                "queue_ms": plan.queue_ms,
                "host_queue": plan.host_queue,
                "agent_env": AgentEnv::listed(&plan.env.all),
                "seeder_env": AgentEnv::listed(&plan.env.seeder),
                "warm_up_mib": plan.warm_up_mib,
                "index_loop_requests_per_downloader_per_s": c.index_loop_rps_per_downloader,
                "agents_cpu_s": c.agents.iter().map(|a| a.cpu_s).sum::<f64>(),
                "agents_cpu_s_per_gib": c.agents_cpu_s_per_gib,
                "agents_user_s_per_gib": c.agents_user_s_per_gib,
                "aria2": c.bt,
                "raw_mesh": c.mesh,
                "raw_mesh_failed": c.mesh_failed,
                "max_agent_peak_rss_bytes": c.max_agent_rss_bytes,
                "per_host_s": c.per_host_s, "agents": c.agents,
            })
        })
        .collect();
    let summary: Vec<serde_json::Value> = summaries.iter().map(CaseSummary::json).collect();
    let path = |ext: &str| base.with_extension(ext);
    std::fs::write(
        path("json"),
        serde_json::to_string_pretty(&serde_json::json!({"summary": summary, "runs": runs}))?,
    )?;
    let mut csv = String::from(
        "n,size_mib,rate_mbit,ours_s,aria2_s,http_s,p2p_bound_s,client_server_bound_s,ours_over_p2p_bound,seeder_uploaded_multiple_of_f,all_uploaded_over_n_f,index_requests_per_downloader_per_s,agents_cpu_s_per_gib,agents_user_s_per_gib,aria2_cpu_s_per_gib,aria2_user_s_per_gib,cpu_busy_swarm,cpu_busy_http,max_agent_peak_rss_mib,raw_mesh_s,raw_mesh_cpu_s_per_gib,raw_mesh_user_s_per_gib\n",
    );
    let opt = |v: Option<f64>| v.map_or(String::new(), |v| format!("{v:.3}"));
    for c in cases {
        csv += &format!(
            "{},{},{},{:.3},{},{},{:.3},{:.3},{:.3},{:.3},{:.3},{},{:.3},{:.3},{},{},{},{},{:.1},{},{},{}\n",
            c.n,
            c.size_bytes >> 20,
            rate_mbit,
            c.ours_s,
            opt(c.bt.as_ref().map(|b| b.time_s)),
            opt(c.http_s),
            c.p2p_bound_s,
            c.cs_bound_s,
            c.ours_s / c.p2p_bound_s,
            c.seeder_upload_multiple,
            c.upload_over_needed,
            opt(c.index_rps_per_downloader),
            c.agents_cpu_s_per_gib,
            c.agents_user_s_per_gib,
            opt(c.bt.as_ref().map(|b| b.cpu_s_per_gib)),
            opt(c.bt.as_ref().map(|b| b.user_s_per_gib)),
            opt(c.cpu_busy_swarm),
            opt(c.cpu_busy_http),
            c.max_agent_rss_bytes as f64 / 1048576.0,
            opt(c.mesh.as_ref().map(|m| m.time_s)),
            opt(c.mesh.as_ref().map(|m| m.cpu_s_per_gib)),
            opt(c.mesh.as_ref().map(|m| m.user_s_per_gib)),
        );
    }
    std::fs::write(path("csv"), csv)?;
    let medians: Vec<&SwarmCase> = summaries
        .iter()
        .map(|s| {
            let mut runs = s.runs.clone();
            runs.sort_by(|a, b| a.ours_s.total_cmp(&b.ours_s));
            runs[runs.len() / 2]
        })
        .collect();
    std::fs::write(path("svg"), swarm_svg(&medians, rate_mbit))?;
    for c in &medians {
        if let Some(svg) = timeline_svg(c) {
            std::fs::write(
                path(&format!("N{}-{}MiB.timeline.svg", c.n, c.size_bytes >> 20)),
                svg,
            )?;
        }
    }
    std::fs::write(path("timeline.csv"), table.timeline)?;
    std::fs::write(path("flows.csv"), table.flows)?;
    println!(
        "wrote {}.{{json,csv,svg,timeline.csv,flows.csv}}",
        base.display()
    );
    Ok(())
}

/// The runs of one (N, F) case, summarised.
struct CaseSummary<'a> {
    runs: Vec<&'a SwarmCase>,
}

impl CaseSummary<'_> {
    /// Median and range of `f` over the runs that have it.
    fn spread(&self, f: impl Fn(&SwarmCase) -> Option<f64>) -> Option<Spread> {
        Spread::of(self.runs.iter().filter_map(|c| f(c)))
    }

    /// The summary's entry in `<base>.json`.
    fn json(&self) -> serde_json::Value {
        let c = self.runs[0];
        serde_json::json!({
            "n": c.n, "size_bytes": c.size_bytes, "runs": self.runs.len(),
            "p2p_bound_s": c.p2p_bound_s,
            "ours_s": self.spread(|c| Some(c.ours_s)),
            "ours_over_p2p_bound": self.spread(|c| Some(c.ours_s / c.p2p_bound_s)),
            "seeder_uploaded_multiple_of_f": self.spread(|c| Some(c.seeder_upload_multiple)),
            "index_requests_per_downloader_per_s": self.spread(|c| c.index_rps_per_downloader),
            "index_loop_requests_per_downloader_per_s": self.spread(|c| c.index_loop_rps_per_downloader),
            "cpu_busy_swarm": self.spread(|c| c.cpu_busy_swarm),
            "agents_cpu_s_per_gib": self.spread(|c| Some(c.agents_cpu_s_per_gib)),
            "agents_user_s_per_gib": self.spread(|c| Some(c.agents_user_s_per_gib)),
            "last_minus_median_downloader_s": self.spread(tail_s),
            "first_chunk_s": self.spread(|c| c.links.as_ref().map(|l| l.first_chunk_s)),
            "seeder_busy_s": self.spread(|c| c.links.as_ref().map(|l| l.seeder_busy_s)),
            "seeder_link_use": self.spread(|c| c.links.as_ref().map(|l| l.seeder_link_use)),
            "starved_s": self.spread(|c| c.links.as_ref().map(|l| l.starved_s)),
            "aria2_s": self.spread(|c| c.bt.as_ref().map(|b| b.time_s)),
            "aria2_over_p2p_bound": self.spread(|c| c.bt.as_ref().map(|b| b.time_s / c.p2p_bound_s)),
            "aria2_cpu_s_per_gib": self.spread(|c| c.bt.as_ref().map(|b| b.cpu_s_per_gib)),
            "aria2_user_s_per_gib": self.spread(|c| c.bt.as_ref().map(|b| b.user_s_per_gib)),
            "raw_mesh_s": self.spread(|c| c.mesh.as_ref().map(|m| m.time_s)),
            "raw_mesh_over_p2p_bound": self.spread(|c| c.mesh.as_ref().map(|m| m.time_s / c.p2p_bound_s)),
            "raw_mesh_cpu_s_per_gib": self.spread(|c| c.mesh.as_ref().map(|m| m.cpu_s_per_gib)),
            "raw_mesh_user_s_per_gib": self.spread(|c| c.mesh.as_ref().map(|m| m.user_s_per_gib)),
            "http_s": self.spread(|c| c.http_s),
        })
    }
}
