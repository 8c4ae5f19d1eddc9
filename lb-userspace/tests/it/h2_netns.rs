//! HTTP/2 to clients through ALPN on a TLS service: curl over h2 with the scripts running
//! per stream, and a rapid-reset client (CVE-2023-44487) cut off while another client is
//! served. Needs root: `#[ignore]`d, run with `--include-ignored`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use latch_tests::{DataScript, LatchAgent, Tls, VirtualService};
use rustls::pki_types::ServerName;

use crate::netns_config::{TestResult, lb_agent, start_agent, web_pool};
use crate::tls_netns::{Pki, SHOP, curl, rustls_client, tls_connect, tls_get, vip};

/// `secure` on VIP:443 offering h2 and http/1.1, with a request and a response script.
fn start(pki: &Pki) -> Result<LatchAgent, Box<dyn std::error::Error>> {
    start_agent(&pki.topo, |agent| {
        lb_agent(&pki.topo, agent).pool(web_pool(&pki.topo)).virtual_service(
            VirtualService::http("secure", vip(&pki.topo, 443), "web")
                .tls(Tls::new(std::slice::from_ref(&pki.shop)).alpn(&["h2", "http/1.1"]))
                .datascripts([
                    DataScript::request(
                        r#"avi.http.add_header("X-Req-Script", avi.http.get_path() .. " " .. avi.ssl.protocol())"#,
                    ),
                    DataScript::response(r#"avi.http.add_header("X-Resp-Script", "ran")"#),
                ]),
        )
    })
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn http2_through_alpn_runs_the_scripts_per_stream() -> TestResult {
    let pki = Pki::new()?;
    let _agent = start(&pki)?;
    let topo = &pki.topo;
    let (ok, text) = topo.client().run(|| {
        curl(
            topo,
            &pki.ca.cert_file,
            SHOP,
            443,
            "/headers?one",
            &["--http2", "-i", &format!("https://{SHOP}:443/headers?two")],
        )
    })?;
    assert!(ok, "{text}");
    assert!(text.contains("ALPN: server accepted h2"), "{text}");
    assert_eq!(
        text.matches("HTTP/2 200").count(),
        4,
        "two responses (-i and -v): {text}"
    );
    assert_eq!(text.matches("x-resp-script: ran").count(), 4, "{text}");
    assert_eq!(
        text.matches("x-req-script: /headers TLSv1.3").count(),
        2,
        "{text}"
    );
    assert!(
        text.contains("Re-using existing connection"),
        "one connection: {text}"
    );
    // A header list over max_header_bytes (16 KiB; curl sends it as HEADERS and CONTINUATION
    // frames) is answered 431 by h2 itself, without reaching a server.
    let big = format!("X-Big: {}", "a".repeat(20_000));
    let (_, text) = topo.client().run(|| {
        curl(
            topo,
            &pki.ca.cert_file,
            SHOP,
            443,
            "/headers",
            &["--http2", "-H", &big],
        )
    })?;
    assert!(
        text.contains("HTTP/2 431"),
        "a 20 KB header list was not refused: {text}"
    );
    // The server advertises its stream limit.
    let limit = topo.client().run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?
            .block_on(stream_limit(vip(topo, 443), &pki.ca.cert_file))
    })?;
    assert_eq!(limit, 100);
    // HTTP/1.1 is still offered.
    let (ok, text) = topo.client().run(|| {
        curl(
            topo,
            &pki.ca.cert_file,
            SHOP,
            443,
            "/headers",
            &["--http1.1"],
        )
    })?;
    assert!(
        ok && text.contains("HTTP/1.1 200") && text.contains("x-req-script"),
        "{text}"
    );
    Ok(())
}

/// An HTTP/2 connection to `addr`: the client handle and its connection task.
async fn h2_connect(
    addr: std::net::SocketAddr,
    ca: &Path,
) -> Result<
    (
        h2::client::SendRequest<bytes::Bytes>,
        tokio::task::JoinHandle<Result<(), h2::Error>>,
    ),
    String,
> {
    let mut config = (*rustls_client(ca, None)?).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(SHOP).map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (client, conn) = h2::client::Builder::new()
        .max_concurrent_reset_streams(usize::MAX)
        .handshake::<_, bytes::Bytes>(tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok((client, tokio::spawn(conn)))
}

/// The SETTINGS_MAX_CONCURRENT_STREAMS the server sent (after one request).
async fn stream_limit(addr: std::net::SocketAddr, ca: &Path) -> Result<usize, String> {
    let (client, _conn) = h2_connect(addr, ca).await?;
    let mut client = client.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get(format!("https://{SHOP}/"))
        .body(())
        .map_err(|e| e.to_string())?;
    let (response, _) = client.send_request(req, true).map_err(|e| e.to_string())?;
    response.await.map_err(|e| e.to_string())?;
    Ok(client.current_max_send_streams())
}

/// Opens streams on one HTTP/2 connection and resets each at once, up to `max` streams.
/// Returns how many it opened and how the connection ended.
async fn rapid_reset(
    addr: std::net::SocketAddr,
    ca: &Path,
    max: usize,
) -> Result<(usize, String), String> {
    let (mut client, driver) = h2_connect(addr, ca).await?;
    let mut opened = 0;
    let why = loop {
        if opened == max {
            break "every stream was opened".to_string();
        }
        client = match client.ready().await {
            Ok(c) => c,
            Err(e) => break e.to_string(),
        };
        let req = http::Request::get(format!("https://{SHOP}/slow?ms=200"))
            .body(())
            .map_err(|e| e.to_string())?;
        match client.send_request(req, true) {
            Ok((response, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                drop(response);
                opened += 1;
                // Let the connection task write the frames and read what the server says.
                tokio::task::yield_now().await;
            }
            Err(e) => break e.to_string(),
        }
    };
    let ended = tokio::time::timeout(Duration::from_secs(5), driver).await;
    Ok((opened, format!("{why}; connection: {ended:?}")))
}

#[test]
#[ignore = "needs root: creates network namespaces"]
fn a_rapid_reset_client_is_cut_off_while_another_client_is_served() -> TestResult {
    let pki = Pki::new()?;
    let _agent = start(&pki)?;
    let topo = &pki.topo;
    let addr = vip(topo, 443);
    let ca = pki.ca.cert_file.clone();
    const MAX_STREAMS: usize = 100_000;
    let (abuse, served) = topo.client().run(|| {
        std::thread::scope(|scope| {
            let abuser = scope.spawn(|| {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?;
                rt.block_on(rapid_reset(addr, &ca, MAX_STREAMS))
            });
            // The other client: keep-alive requests over HTTP/1.1 while the abuser runs.
            let other = (|| -> Result<usize, String> {
                let config = rustls_client(&ca, None)?;
                let mut conn = tls_connect(addr, SHOP, config)?;
                let mut ok = 0;
                for _ in 0..50 {
                    if tls_get(&mut conn, SHOP, "/")?.0 == 200 {
                        ok += 1;
                    }
                }
                Ok(ok)
            })();
            let abuse = abuser
                .join()
                .unwrap_or_else(|_| Err("abuser panicked".into()));
            (abuse, other)
        })
    });
    let (opened, how) = abuse?;
    assert_eq!(served?, 50, "the other client was not served");
    assert!(
        opened < MAX_STREAMS,
        "the rapid-reset connection was never cut off ({opened} streams): {how}"
    );
    // GOAWAY(ENHANCE_YOUR_CALM), as h2 words it; on a busy machine the client may instead
    // first see the closed socket the GOAWAY was followed by, after more resets than the
    // server's allowance of 20.
    let calm = how.contains("excessive load generating behavior");
    let closed = how.contains("broken pipe") || how.contains("BrokenPipe") || how.contains("reset");
    assert!(calm || (closed && opened > 20), "{opened} streams: {how}");
    // And the service still serves new HTTP/2 clients.
    let (ok, text) = topo
        .client()
        .run(|| curl(topo, &pki.ca.cert_file, SHOP, 443, "/", &["--http2"]))?;
    assert!(ok && text.contains("HTTP/2 200"), "{text}");
    Ok(())
}
