//! `sonde-fidelity report`: percentiles, spreads and goals of every run, as a table on
//! stdout, TSV, Markdown and a PNG plot.

use std::{collections::BTreeMap, fmt::Write as _, path::Path};

use anyhow::{bail, Context, Result};

use crate::{fidelity_plot, ReportArgs};

/// Probe kinds, in display order.
pub const KINDS: [&str; 2] = ["icmp", "syn"];
/// Methods, in display order; the first is the reference for spread ratios.
pub const METHODS: [&str; 4] = ["sonde-kernel", "sonde-userspace", "ping", "hping3"];
/// Conditions, in display order.
pub const CONDS: [&str; 2] = ["idle", "load"];
/// Spread of userspace over kernel timestamps under load that the goal asks for.
const SPREAD_GOAL: f64 = 5.0;
/// Kernel p50 over the smallest idle RTT that the goal allows.
const P50_GOAL: f64 = 2.0;

/// The samples of one run.
#[derive(Debug, Clone)]
pub struct Series {
    /// `icmp` or `syn`.
    pub kind: String,
    /// One of [`METHODS`].
    pub method: String,
    /// `idle` or `load`.
    pub cond: String,
    /// Probes sent.
    pub sent: u64,
    /// Answered probes measured by the method's clock (sonde: other clock, see header).
    pub rtts_ns: Vec<u64>,
    /// The facts of the header line (`key=value`).
    pub header: BTreeMap<String, String>,
}

/// Percentiles of one series, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

impl Stats {
    /// p99 - p50.
    pub fn spread(&self) -> f64 {
        self.p99 - self.p50
    }
}

/// Nearest-rank percentile `p` (0-1) of sorted `v`, in microseconds.
#[allow(
    clippy::cast_precision_loss,
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss
)]
fn pct(v: &[u64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1] as f64 / 1e3
}

/// Busy % of the machine above which an idle run counts as disturbed.
const BUSY_LIMIT: u32 = 10;

impl Series {
    /// Whether other work kept the machine busy just before this (idle) run.
    pub fn disturbed(&self) -> bool {
        self.header
            .get("busy")
            .and_then(|b| b.parse::<u32>().ok())
            .is_some_and(|b| b > BUSY_LIMIT)
    }

    /// Percentiles of the samples.
    pub fn stats(&self) -> Stats {
        let v = &self.rtts_ns;
        Stats {
            min: pct(v, 0.0),
            p50: pct(v, 0.5),
            p90: pct(v, 0.9),
            p99: pct(v, 0.99),
            p999: pct(v, 0.999),
            max: pct(v, 1.0),
        }
    }
}

/// Read one `<kind>.<method>.<cond>.rtt` file.
fn read(path: &Path) -> Result<Option<Series>> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let Some(stem) = name.strip_suffix(".rtt") else {
        return Ok(None);
    };
    let parts: Vec<&str> = stem.split('.').collect();
    let [kind, method, cond] = parts[..] else {
        bail!("{name}: expected <kind>.<method>.<cond>.rtt");
    };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
    let mut header = BTreeMap::new();
    let mut rtts_ns = Vec::new();
    for line in text.lines() {
        if let Some(h) = line.strip_prefix('#') {
            for kv in h.split_whitespace() {
                if let Some((k, v)) = kv.split_once('=') {
                    header.insert(k.to_owned(), v.to_owned());
                }
            }
        } else if !line.trim().is_empty() {
            rtts_ns.push(
                line.trim()
                    .parse::<u64>()
                    .with_context(|| format!("{name}: bad sample {line:?}"))?,
            );
        }
    }
    rtts_ns.sort_unstable();
    // The machine's busy % just before an idle run (other work on a shared machine).
    if let Ok(b) = std::fs::read_to_string(path.with_extension("busy")) {
        header.insert("busy".to_owned(), b.trim().to_owned());
    }
    let sent = header
        .get("sent")
        .and_then(|s| s.parse().ok())
        .unwrap_or(rtts_ns.len() as u64);
    Ok(Some(Series {
        kind: kind.to_owned(),
        method: method.to_owned(),
        cond: cond.to_owned(),
        sent,
        rtts_ns,
        header,
    }))
}

/// Every series of `dir`, in display order.
pub fn load(dir: &Path) -> Result<Vec<Series>> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        if let Some(s) = read(&e?.path())? {
            all.push(s);
        }
    }
    let pos = |list: &[&str], x: &str| list.iter().position(|k| *k == x).unwrap_or(list.len());
    all.sort_by_key(|s| {
        (
            pos(&KINDS, &s.kind),
            pos(&CONDS, &s.cond),
            pos(&METHODS, &s.method),
        )
    });
    Ok(all)
}

fn find<'a>(all: &'a [Series], kind: &str, method: &str, cond: &str) -> Option<&'a Series> {
    all.iter()
        .find(|s| s.kind == kind && s.method == method && s.cond == cond)
}

fn us(x: f64) -> String {
    if x.is_nan() {
        "-".to_owned()
    } else {
        format!("{x:.1}")
    }
}

/// One row of the table: cells as text.
fn row(all: &[Series], s: &Series) -> Vec<String> {
    let st = s.stats();
    let kernel = find(all, &s.kind, METHODS[0], &s.cond).map(|k| k.stats().spread());
    let ratio = match kernel {
        Some(k) if s.method != METHODS[0] && k > 0.0 => format!("{:.1}x", st.spread() / k),
        _ => "-".to_owned(),
    };
    let mut answered = format!("{}/{}", s.rtts_ns.len(), s.sent);
    if let Some(n) = s.header.get("other_clock").filter(|n| *n != "0") {
        let _ = write!(answered, " (+{n} other clock)");
    }
    vec![
        s.kind.clone(),
        s.method.clone(),
        if s.disturbed() {
            format!("{}(!)", s.cond)
        } else {
            s.cond.clone()
        },
        answered,
        us(st.min),
        us(st.p50),
        us(st.p90),
        us(st.p99),
        us(st.p999),
        us(st.max),
        us(st.spread()),
        ratio,
    ]
}

const HEADERS: [&str; 12] = [
    "probe",
    "method",
    "cond",
    "answered",
    "min",
    "p50",
    "p90",
    "p99",
    "p99.9",
    "max",
    "p99-p50",
    "spread/kernel",
];

/// The goal lines: (text, met).
fn goals(all: &[Series]) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    for kind in KINDS {
        let get = |m: &str, c: &str| find(all, kind, m, c).map(Series::stats);
        if let (Some(k), Some(u)) = (get("sonde-kernel", "load"), get("sonde-userspace", "load")) {
            let r = if k.spread() > 0.0 {
                u.spread() / k.spread()
            } else {
                f64::INFINITY
            };
            out.push((
                format!(
                    "{kind}: under load, userspace p99-p50 / kernel p99-p50 = {} / {} us = {r:.1}x (goal >= {SPREAD_GOAL}x)",
                    us(u.spread()),
                    us(k.spread())
                ),
                r >= SPREAD_GOAL,
            ));
        }
        // The smallest RTT any method saw idle (a 0 reading is below that method's
        // resolution, e.g. hping3's 0.1 ms, and says nothing).
        let smallest = all
            .iter()
            .filter(|s| s.kind == kind && s.cond == "idle")
            .filter_map(|s| {
                s.rtts_ns
                    .iter()
                    .find(|v| **v > 0)
                    .map(|v| (*v, s.method.clone()))
            })
            .min();
        for cond in CONDS {
            if let (Some(k), Some((min_ns, by))) = (get("sonde-kernel", cond), &smallest) {
                #[allow(clippy::cast_precision_loss)]
                let min = *min_ns as f64 / 1e3;
                let r = k.p50 / min;
                let text = format!(
                    "{kind}: kernel p50 {cond} {} us = {r:.2}x the smallest idle RTT ({} us, {by}) (goal <= {P50_GOAL}x{})",
                    us(k.p50),
                    us(min),
                    if cond == "idle" { "" } else { "; informative" }
                );
                out.push((text, r <= P50_GOAL));
            }
        }
    }
    out
}

/// Columns padded to their widest cell.
fn aligned(rows: &[Vec<String>]) -> String {
    let mut w = vec![0; HEADERS.len()];
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.len());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

const DISTURBED: &str =
    "(!): other work kept the machine more than 10 % busy just before this idle run";

/// Run the report.
pub fn run(args: &ReportArgs) -> Result<()> {
    let all = load(&args.dir)?;
    if all.is_empty() {
        bail!("no .rtt files in {}", args.dir.display());
    }
    let mut rows = vec![HEADERS.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>()];
    rows.extend(all.iter().map(|s| row(&all, s)));
    let goals = goals(&all);
    let mut text = aligned(&rows);
    text.push_str("(microseconds; spread/kernel: this p99-p50 over sonde-kernel's, same probe and condition)\n");
    if all.iter().any(Series::disturbed) {
        let _ = writeln!(text, "{DISTURBED}");
    }
    for (g, met) in &goals {
        let _ = writeln!(text, "goal  {g}: {}", if *met { "met" } else { "NOT met" });
    }
    print!("{text}");

    let tsv: String = rows.iter().map(|r| r.join("\t") + "\n").collect();
    std::fs::write(&args.tsv, tsv).with_context(|| format!("writing {}", args.tsv.display()))?;
    let mut md = format!(
        "| {} |\n|{}\n",
        HEADERS.join(" | "),
        "---|".repeat(HEADERS.len())
    );
    for r in &rows[1..] {
        let _ = writeln!(md, "| {} |", r.join(" | "));
    }
    md.push_str(
        "\nTimes in microseconds; answered: probes answered and timed by that method's clock; \
         spread/kernel: this p99-p50 over sonde-kernel's for the same probe and condition.\n",
    );
    if all.iter().any(Series::disturbed) {
        let _ = writeln!(md, "{DISTURBED}");
    }
    md.push('\n');
    for (g, met) in &goals {
        let _ = writeln!(md, "- {g}: **{}**", if *met { "met" } else { "not met" });
    }
    std::fs::write(&args.markdown, md)
        .with_context(|| format!("writing {}", args.markdown.display()))?;
    fidelity_plot::plot(&all, &args.load, &args.png)?;
    println!("plot: {}", args.png.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(kind: &str, method: &str, cond: &str, us: &[u64]) -> Series {
        Series {
            kind: kind.into(),
            method: method.into(),
            cond: cond.into(),
            sent: us.len() as u64,
            rtts_ns: us.iter().map(|u| u * 1000).collect(),
            header: BTreeMap::new(),
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        assert!((pct(&v, 0.5) - 500.0).abs() < 1e-9);
        assert!((pct(&v, 0.99) - 990.0).abs() < 1e-9);
        assert!((pct(&v, 0.999) - 999.0).abs() < 1e-9);
        assert!((pct(&v, 1.0) - 1000.0).abs() < 1e-9);
        assert!((pct(&v, 0.0) - 1.0).abs() < 1e-9);
        assert!(pct(&[], 0.5).is_nan());
    }

    #[test]
    fn goals_compare_spreads_and_the_smallest_idle_rtt() {
        let mut k: Vec<u64> = vec![20; 99];
        k.push(30);
        let mut u: Vec<u64> = vec![40; 98];
        u.extend([400, 900]);
        let all = vec![
            series("icmp", "sonde-kernel", "idle", &k),
            series("icmp", "ping", "idle", &[0, 15, 16]),
            series("icmp", "sonde-kernel", "load", &k),
            series("icmp", "sonde-userspace", "load", &u),
        ];
        let g = goals(&all);
        assert_eq!(g.len(), 3, "{g:?}");
        // spreads: kernel 20 - 20 = 0 -> infinite ratio; the zero ping reading is ignored.
        assert!(g[0].1, "{g:?}");
        assert!(g[1].0.contains("15.0 us, ping"), "{g:?}");
        assert!(g[1].1 && g[2].1, "{g:?}");
        assert_eq!(row(&all, &all[3])[11], "-", "kernel spread 0: no ratio");
    }
}
