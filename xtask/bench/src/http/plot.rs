//! target/bench/http.png: req/s bars, keep-alive and connection per request side by side,
//! drawn with the data plane bench's panel helper.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::report::{HttpReport, Lb, Mode};
use crate::plot::{Bar, write_panels};

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
    let panels: Vec<(String, Vec<Bar>)> = [Mode::KeepAlive, Mode::Close]
        .into_iter()
        .map(|mode| {
            let bars = report
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
            (
                format!("req/s, {} (wrk -c{})", mode.label(), report.connections),
                bars,
            )
        })
        .collect();
    write_panels(path, WIDTH, &panels)
}
