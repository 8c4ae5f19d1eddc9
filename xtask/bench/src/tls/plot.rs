//! target/bench/tls.png: handshakes/s, TLS keep-alive req/s and HTTP/2 req/s, latch beside
//! HAProxy at each worker count, drawn with the data plane bench's panel helper.

use std::path::Path;

use anyhow::Result;
use plotters::prelude::*;

use super::report::{Cert, Lb, Mode, TlsReport};
use crate::plot::{Bar, write_panels};

const WIDTH: i32 = 1800;

fn color(lb: Lb, cert: Cert) -> RGBColor {
    match (lb, cert) {
        (Lb::Latch, Cert::EcdsaP256) => RGBColor(40, 110, 190),
        (Lb::Latch, Cert::Rsa2048) => RGBColor(120, 170, 220),
        (Lb::Haproxy, Cert::EcdsaP256) => RGBColor(214, 120, 40),
        (Lb::Haproxy, Cert::Rsa2048) => RGBColor(240, 180, 120),
    }
}

pub fn write_png(report: &TlsReport, path: &Path) -> Result<()> {
    let panels: Vec<(String, Vec<Bar>)> = [
        (
            Mode::Handshake,
            "handshakes/s, connection per request (ECDSA, RSA)",
        ),
        (Mode::KeepAlive, "req/s, TLS keep-alive (HTTP/1.1)"),
        (Mode::H2, "req/s, HTTP/2 (h2load)"),
    ]
    .into_iter()
    .map(|(mode, title)| {
        let bars = report
            .measurements
            .iter()
            .filter(|m| m.mode == mode)
            .map(|m| Bar {
                label: format!(
                    "{} {}\n{} wk",
                    m.lb.short(),
                    match m.cert {
                        Cert::EcdsaP256 => "EC",
                        Cert::Rsa2048 => "RSA",
                    },
                    m.workers
                ),
                value: m.rate,
                text: format!("{:.1}k", m.rate / 1000.0),
                color: color(m.lb, m.cert),
            })
            .collect();
        (title.to_string(), bars)
    })
    .collect();
    write_panels(path, WIDTH, &panels)
}
