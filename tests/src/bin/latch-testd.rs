//! `latch-testd`: the test backend (`serve`) and a tiny client (`get`, `udp`) for use with
//! `ip netns exec`. See `latch_tests::server` for the endpoints.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use latch_tests::{ServeConfig, TestServer};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "latch test backend and client")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve HTTP and/or UDP until SIGTERM or SIGINT; prints `READY ...` once listening.
    Serve {
        #[arg(long)]
        name: String,
        #[arg(long)]
        http: Option<SocketAddr>,
        #[arg(long)]
        udp: Option<SocketAddr>,
    },
    /// GET http://ADDR/PATH and print status, backend, seen client and body.
    Get {
        addr: SocketAddr,
        #[arg(default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 5)]
        timeout_s: u64,
    },
    /// Send one UDP datagram and print the reply.
    Udp {
        addr: SocketAddr,
        #[arg(default_value = "ping")]
        payload: String,
        #[arg(long, default_value_t = 2)]
        timeout_s: u64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Serve { name, http, udp } => serve(ServeConfig {
            name,
            http,
            udp,
            tls: None,
        }),
        Cmd::Get {
            addr,
            path,
            timeout_s,
        } => {
            let r = latch_tests::http_request(
                addr,
                "GET",
                &path,
                &[],
                latch_tests::RequestBody::Empty,
                Duration::from_secs(timeout_s),
            )?;
            println!(
                "{} backend={} seen_client={} {}",
                r.status,
                r.backend.as_deref().unwrap_or("-"),
                r.seen_client.map_or_else(|| "-".into(), |a| a.to_string()),
                r.body_text()
            );
            Ok(())
        }
        Cmd::Udp {
            addr,
            payload,
            timeout_s,
        } => {
            let r = latch_tests::udp_roundtrip(
                addr,
                payload.as_bytes(),
                Duration::from_secs(timeout_s),
            )?;
            println!("{} from={}", r.text, r.from);
            Ok(())
        }
    }
}

fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    anyhow::ensure!(
        cfg.http.is_some() || cfg.udp.is_some(),
        "give --http and/or --udp"
    );
    let server = TestServer::bind(&cfg).context("bind")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        println!("{}", server.ready_line());
        let run = tokio::spawn(server.run(stop_rx));
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        let _ = stop_tx.send(true);
        run.await.context("server task")??;
        anyhow::Ok(())
    })
}
