//! target/bench/http.png: req/s bars, keep-alive and connection per request side by side,
//! drawn with the data plane bench's panel helper.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

use super::report::{HttpReport, Lb, Mode};
use crate::plot::{Bar, H, load_font, panel};

const WIDTH: i32 = 1600;

fn color(lb: Lb, valid: bool) -> RGBColor {
    if !valid {
        return RGBColor(200, 40, 40);
    }
    match lb {
        Lb::Direct => RGBColor(150, 150, 150),
        Lb::LatchPlain => RGBColor(120, 170, 220),
        Lb::LatchScripts => RGBColor(40, 110, 190),
        Lb::LatchFastPath => RGBColor(20, 60, 130),
        Lb::Haproxy => RGBColor(214, 120, 40),
        Lb::NginxLua => RGBColor(60, 150, 90),
    }
}

pub fn write_png(report: &HttpReport, path: &Path) -> Result<()> {
    let text = load_font();
    let root = BitMapBackend::new(path, (WIDTH as u32, H as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("drawing: {e:?}"))?;
    for (i, mode) in [Mode::KeepAlive, Mode::Close].into_iter().enumerate() {
        let bars: Vec<Bar> = report
            .measurements
            .iter()
            .filter(|m| m.mode == mode)
            .map(|m| Bar {
                label: format!(
                    "{}\n{}",
                    m.lb.short(),
                    match (m.workers, m.lb, m.valid) {
                        (0, Lb::LatchFastPath, false) => "NOT ENGAGED".to_string(),
                        (0, _, _) => String::new(),
                        (w, _, _) => format!("{w} wk"),
                    }
                ),
                value: m.rps,
                text: format!("{:.1}k", m.rps / 1000.0),
                color: color(m.lb, m.valid),
            })
            .collect();
        panel(
            &root,
            i as i32 * WIDTH / 2,
            WIDTH / 2,
            &format!("req/s, {} (wrk -c{})", mode.label(), report.connections),
            &bars,
            text,
        )?;
    }
    root.present()
        .map_err(|e| anyhow!("writing {}: {e:?}", path.display()))?;
    Ok(())
}
