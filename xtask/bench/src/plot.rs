//! The PNG: two bar panels (Mpps on veth; ns/packet per path), drawn from plotters primitives
//! so that the chart still renders (bars only) when no font is available.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use crate::report::Report;

/// DejaVu ships with the machine image; text is skipped if it is missing.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

pub fn load_font() -> bool {
    match std::fs::read(FONT) {
        Ok(bytes) => {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
        }
        Err(_) => false,
    }
}

pub struct Bar {
    pub label: String,
    pub value: f64,
    pub text: String,
    pub color: RGBColor,
}

pub const W: i32 = 1200;
pub const H: i32 = 560;

pub fn panel(
    root: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    x0: i32,
    width: i32,
    title: &str,
    bars: &[Bar],
    text: bool,
) -> Result<()> {
    let err = |e: DrawingAreaErrorKind<_>| anyhow!("drawing: {e:?}");
    let (top, bottom) = (70, H - 110);
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max).max(1e-9);
    let slot = width / bars.len().max(1) as i32;
    let bar_w = slot * 3 / 5;
    root.draw(&PathElement::new(
        vec![(x0 + 10, bottom), (x0 + width - 10, bottom)],
        BLACK.stroke_width(2),
    ))
    .map_err(err)?;
    for (i, b) in bars.iter().enumerate() {
        let left = x0 + i as i32 * slot + (slot - bar_w) / 2;
        let h = ((bottom - top) as f64 * (b.value / max)).round() as i32;
        root.draw(&Rectangle::new(
            [(left, bottom - h), (left + bar_w, bottom)],
            b.color.filled(),
        ))
        .map_err(err)?;
        if text {
            let style = ("sans-serif", 15).into_font().color(&BLACK);
            root.draw(&Text::new(
                b.text.clone(),
                (left, bottom - h - 22),
                style.clone(),
            ))
            .map_err(err)?;
            for (k, line) in b.label.split('\n').enumerate() {
                root.draw(&Text::new(
                    line.to_string(),
                    (left - 10, bottom + 10 + 20 * k as i32),
                    style.clone(),
                ))
                .map_err(err)?;
            }
        }
    }
    if text {
        root.draw(&Text::new(
            title.to_string(),
            (x0 + 20, 20),
            ("sans-serif", 22).into_font().color(&BLACK),
        ))
        .map_err(err)?;
    }
    Ok(())
}

/// A PNG `width` wide of side-by-side bar panels, one per `(title, bars)`.
pub fn write_panels(path: &Path, width: i32, panels: &[(String, Vec<Bar>)]) -> Result<()> {
    let text = load_font();
    let root = BitMapBackend::new(path, (width as u32, H as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e:?}"))?;
    let n = panels.len().max(1) as i32;
    for (i, (title, bars)) in panels.iter().enumerate() {
        panel(&root, i as i32 * width / n, width / n, title, bars, text)?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e:?}", path.display()))?;
    Ok(())
}

pub fn write_png(report: &Report, path: &Path) -> Result<()> {
    let text = load_font();
    let root = BitMapBackend::new(path, (W as u32, H as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e:?}"))?;
    let rate_color = |key: &str| match key {
        "ceiling" => RGBColor(150, 150, 150),
        "nft_dnat" => RGBColor(214, 120, 40),
        _ => RGBColor(40, 110, 190),
    };
    let rates: Vec<Bar> = report
        .rates
        .iter()
        .map(|r| Bar {
            label: r.label.replacen(' ', "\n", 1),
            value: r.mpps,
            text: format!("{:.2}", r.mpps),
            color: rate_color(r.key),
        })
        .collect();
    let paths: Vec<Bar> = report
        .paths
        .iter()
        .filter(|p| p.key != "non_vip_pass_single")
        .map(|p| Bar {
            label: match p.key {
                "non_vip_pass" => "non-VIP\npass".into(),
                "conntrack_hit_dsr" => "conntrack hit\nDSR (repeat)".into(),
                "conntrack_hit" => "conntrack hit\nNAT".into(),
                "new_flow" => "new flow".into(),
                "persistence_hit" => "persistence\nhit".into(),
                _ => p.label.replacen(' ', "\n", 1),
            },
            value: p.ns,
            text: format!("{:.0}", p.ns),
            color: if p.check_ok {
                RGBColor(60, 150, 90)
            } else {
                RGBColor(200, 40, 40)
            },
        })
        .collect();
    panel(&root, 0, W / 2, "Mpps on veth (64-byte UDP)", &rates, text)?;
    panel(
        &root,
        W / 2,
        W / 2,
        "ns/packet (BPF_PROG_TEST_RUN)",
        &paths,
        text,
    )?;
    root.present()
        .map_err(|e| anyhow!("writing {}: {e:?}", path.display()))?;
    Ok(())
}
