//! The plot of `sonde-fidelity report`: one panel per probe kind, each series drawn as
//! the share of probes slower than x (a complementary CDF), log-log, so the tails that
//! separate the clocks are as visible as the medians. Drawn into a palette bitmap and
//! written as PNG by [`crate::fidelity_png`]; text uses [`crate::fidelity_font`].

use std::path::Path;

use anyhow::{Context, Result};

use crate::{
    fidelity_font as font, fidelity_png,
    fidelity_report::{Series, KINDS},
};

const W: usize = 1400;
const H: usize = 1010;

/// Palette: background, ink, grid, secondary text, then one colour per method.
const PALETTE: [[u8; 3]; 7] = [
    [255, 255, 255],
    [20, 20, 20],
    [222, 222, 222],
    [110, 110, 110],
    [31, 119, 180],
    [230, 110, 0],
    [44, 160, 44],
];
const INK: u8 = 1;
const GRID: u8 = 2;
const GREY: u8 = 3;

/// Colour of a method's lines.
fn colour(method: &str) -> u8 {
    match method {
        "sonde-kernel" => 4,
        "sonde-userspace" => 5,
        _ => 6,
    }
}

/// A palette bitmap.
struct Canvas {
    /// Palette indices, row by row.
    px: Vec<u8>,
}

impl Canvas {
    fn new() -> Self {
        Self { px: vec![0; W * H] }
    }

    fn dot(&mut self, x: i64, y: i64, c: u8) {
        if let (Ok(x), Ok(y)) = (usize::try_from(x), usize::try_from(y)) {
            if x < W && y < H {
                self.px[y * W + x] = c;
            }
        }
    }

    fn rect(&mut self, x0: i64, y0: i64, w: i64, h: i64, c: u8) {
        for y in y0..y0 + h {
            for x in x0..x0 + w {
                self.dot(x, y, c);
            }
        }
    }

    /// A line `width` pixels thick; with `dash`, drawn `dash.0` steps on, `dash.1` off,
    /// the pattern carried on through `phase` across the segments of one polyline.
    #[allow(clippy::too_many_arguments)]
    fn line(
        &mut self,
        (x0, y0): (i64, i64),
        (x1, y1): (i64, i64),
        c: u8,
        width: i64,
        dash: Option<(u32, u32)>,
        phase: &mut u32,
    ) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            let on = dash.is_none_or(|(a, b)| *phase % (a + b) < a);
            *phase = phase.wrapping_add(1);
            if on {
                self.rect(x - width / 2, y - width / 2, width, width, c);
            }
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text with its top-left corner at (x, y), each font pixel `scale` pixels wide.
    fn text(&mut self, x: i64, y: i64, scale: i64, c: u8, s: &str) {
        let adv = i64::try_from(font::ADVANCE).unwrap_or(6) * scale;
        for (i, ch) in s.chars().enumerate() {
            let gx = x + i64::try_from(i).unwrap_or(0) * adv;
            for (row, bits) in font::glyph(ch).iter().enumerate() {
                for col in 0..font::WIDTH {
                    if bits & (1 << (font::WIDTH - 1 - col)) != 0 {
                        let (col, row) = (
                            i64::try_from(col).unwrap_or(0),
                            i64::try_from(row).unwrap_or(0),
                        );
                        self.rect(gx + col * scale, y + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }
}

/// Width in pixels of `s` drawn at `scale`.
fn text_width(s: &str, scale: i64) -> i64 {
    i64::try_from(s.chars().count() * font::ADVANCE).unwrap_or(0) * scale
}

/// The plot area of one panel and its log-log axes.
struct Axes {
    /// Left, top, right, bottom of the plot area in pixels.
    rect: (i64, i64, i64, i64),
    /// log10 of the x range, microseconds.
    lx: (f64, f64),
    /// Decades of the y range (1 down to 10^-decades).
    decades: f64,
}

impl Axes {
    #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
    fn at(&self, us: f64, share: f64) -> (i64, i64) {
        let (l, t, r, b) = self.rect;
        let fx = (us.max(1e-3).log10() - self.lx.0) / (self.lx.1 - self.lx.0);
        let fy = (-share.log10() / self.decades).clamp(0.0, 1.0);
        (
            l + (fx.clamp(0.0, 1.0) * (r - l) as f64).round() as i64,
            t + (fy * (b - t) as f64).round() as i64,
        )
    }
}

/// A microsecond value short enough for the legend.
fn short(us: f64) -> String {
    if us >= 100.0 {
        format!("{us:.0}")
    } else {
        format!("{us:.1}")
    }
}

/// `10^d` microseconds as a short time: 1US, 10US, 100US, 1MS, ..., 10S.
fn decade_label(d: i64) -> String {
    let unit = match d.div_euclid(3) {
        0 => "US",
        1 => "MS",
        2 => "S",
        _ => return format!("1E{d}US"),
    };
    format!(
        "{}{unit}",
        10i64.pow(u32::try_from(d.rem_euclid(3)).unwrap_or(0))
    )
}

fn peer_name(kind: &str) -> &'static str {
    if kind == "syn" {
        "HPING3 (0.1 MS STEPS)"
    } else {
        "PING (IPUTILS)"
    }
}

#[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
fn panel(c: &mut Canvas, all: &[Series], kind: &str, top: i64, lx: (f64, f64), decades: f64) {
    let axes = Axes {
        rect: (200, top + 40, 910, top + 380),
        lx,
        decades,
    };
    let (l, t, r, b) = axes.rect;
    let title = if kind == "syn" {
        "TCP SYN (SYN-ACK ANSWERS)"
    } else {
        "ICMP ECHO"
    };
    c.text(
        (l + r) / 2 - text_width(title, 2) / 2,
        top + 8,
        2,
        INK,
        title,
    );
    for (i, line) in ["SHARE OF", "PROBES", "SLOWER", "THAN X"]
        .iter()
        .enumerate()
    {
        let y = (t + b) / 2 - 44 + 22 * i64::try_from(i).unwrap_or(0);
        c.text(20, y, 2, GREY, line);
    }
    // Grid: decades (with labels) and 2x, 5x minor lines on x; decades on y.
    let mut phase = 0;
    let (d0, d1) = (lx.0.round() as i64, lx.1.round() as i64);
    for d in d0..=d1 {
        for (m, major) in [(1.0, true), (2.0, false), (5.0, false)] {
            let v = m * 10f64.powi(d as i32);
            if v.log10() > lx.1 + 1e-9 {
                continue;
            }
            let (x, _) = axes.at(v, 1.0);
            c.line(
                (x, t),
                (x, b),
                GRID,
                1,
                (!major).then_some((2, 4)),
                &mut phase,
            );
            if major {
                let label = decade_label(d);
                c.text(x - text_width(&label, 2) / 2, b + 10, 2, INK, &label);
            }
        }
    }
    for d in 0..=decades as i64 {
        let share = 10f64.powi(-(d as i32));
        let (_, y) = axes.at(1.0, share);
        c.line((l, y), (r, y), GRID, 1, None, &mut phase);
        let label = if d == 0 {
            "1".to_owned()
        } else {
            format!("1E-{d}")
        };
        c.text(l - 10 - text_width(&label, 2), y - 7, 2, INK, &label);
    }
    let xl = "RTT (LOG SCALE)";
    c.text((l + r) / 2 - text_width(xl, 2) / 2, b + 34, 2, INK, xl);
    c.line((l, t), (l, b), INK, 1, None, &mut phase);
    c.line((l, b), (r, b), INK, 1, None, &mut phase);
    c.line((r, t), (r, b), INK, 1, None, &mut phase);
    c.line((l, t), (r, t), INK, 1, None, &mut phase);

    // Series: idle dashed, then load solid on top.
    let series: Vec<&Series> = all.iter().filter(|s| s.kind == kind).collect();
    for cond in ["idle", "load"] {
        for s in series
            .iter()
            .filter(|s| s.cond == cond && !s.rtts_ns.is_empty())
        {
            let n = s.rtts_ns.len() as f64;
            let dash = (cond == "idle").then_some((7, 5));
            let mut phase = 0;
            let mut prev: Option<(i64, i64)> = None;
            for (i, v) in s.rtts_ns.iter().enumerate() {
                let p = axes.at(*v as f64 / 1e3, (n - i as f64) / n);
                if let Some(q) = prev {
                    if q != p {
                        c.line(q, p, colour(&s.method), 3, dash, &mut phase);
                    }
                }
                prev = Some(p);
            }
        }
    }

    // Legend: one line per series, with its p50 and p99.
    let lx0 = 940;
    c.text(lx0, t, 2, INK, "P50 / P99, MICROSECONDS");
    let mut y = t + 30;
    for method in ["sonde-kernel", "sonde-userspace", "peer"] {
        let mut named = false;
        for cond in ["load", "idle"] {
            let Some(s) = series.iter().find(|s| {
                s.cond == cond
                    && (s.method == method || (method == "peer" && !s.method.starts_with("sonde")))
            }) else {
                continue;
            };
            let name = match method {
                "sonde-kernel" => "SONDE, KERNEL CLOCK",
                "sonde-userspace" => "SONDE, USERSPACE CLOCK",
                _ => peer_name(kind),
            };
            if !named {
                c.text(lx0, y, 2, INK, name);
                y += 22;
                named = true;
            }
            let mut phase = 0;
            let dash = (cond == "idle").then_some((7, 5));
            c.line(
                (lx0, y + 7),
                (lx0 + 50, y + 7),
                colour(&s.method),
                3,
                dash,
                &mut phase,
            );
            let st = s.stats();
            let text = format!("{:<5} {} / {}", cond, short(st.p50), short(st.p99));
            c.text(lx0 + 62, y, 2, INK, &text);
            y += 24;
        }
        y += 10;
    }
}

/// Draw every series of `all` and write the PNG to `path`.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation)]
pub fn plot(all: &[Series], load: &str, path: &Path) -> Result<()> {
    let mut c = Canvas::new();
    let (mut lo, mut hi, mut most) = (f64::INFINITY, 0f64, 1usize);
    for s in all {
        if let (Some(first), Some(last)) = (s.rtts_ns.iter().find(|v| **v > 0), s.rtts_ns.last()) {
            lo = lo.min(*first as f64 / 1e3);
            hi = hi.max(*last as f64 / 1e3);
        }
        most = most.max(s.rtts_ns.len());
    }
    if !lo.is_finite() {
        (lo, hi) = (1.0, 1000.0);
    }
    let lx = (
        lo.log10().floor(),
        hi.log10().ceil().max(lo.log10().floor() + 1.0),
    );
    let decades = (most as f64).log10().ceil().max(1.0);
    let title = "SONDE: RTT MEASURED BY KERNEL VS USERSPACE TIMESTAMPS";
    c.text(30, 18, 3, INK, title);
    let sent = all.iter().map(|s| s.sent).max().unwrap_or(0);
    let sub = format!("SOLID: UNDER LOAD   DASHED: IDLE   {sent} PROBES PER LINE");
    c.text(30, 50, 2, GREY, &sub);
    let load: String = format!("LOAD: {load}").chars().take(110).collect();
    c.text(30, 70, 2, GREY, &load);
    for (i, kind) in KINDS.iter().enumerate() {
        if all.iter().any(|s| s.kind == *kind) {
            panel(&mut c, all, kind, 100 + 450 * i as i64, lx, decades);
        }
    }
    let png = fidelity_png::encode(W as u32, H as u32, &PALETTE, &c.px);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn decades_read_as_times() {
        let l: Vec<String> = (0..8).map(super::decade_label).collect();
        assert_eq!(
            l,
            ["1US", "10US", "100US", "1MS", "10MS", "100MS", "1S", "10S"]
        );
        assert_eq!(super::decade_label(-1), "1E-1US");
    }
}
