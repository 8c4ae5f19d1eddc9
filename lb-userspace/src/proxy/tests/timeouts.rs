//! Timeouts that match their names, on a clock only the test moves: the response timeout
//! counts from the end of the request body; a client or a server that pauses inside a body
//! is cut after its idle timeout, and the fault is put on the one who paused.

use super::*;

/// A POST of `len` bytes whose body the test feeds through the returned sender.
fn upload(
    path: &str,
    len: usize,
) -> Result<(Request<ClientBody>, tokio::sync::mpsc::Sender<Bytes>), TestError> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let req = Request::post(path)
        .header("host", "shop.example")
        .header("content-length", len.to_string())
        .body(StreamBody::new(stream).boxed_unsync())?;
    Ok((req, tx))
}

/// Waits (bounded) until the backend has read `n` bytes of a request body.
async fn upload_seen(state: &BackendState, n: u64) -> bool {
    wait_until(Duration::from_secs(5), || {
        state.upload_seen.load(Ordering::SeqCst) >= n
    })
    .await
}

/// Lets the proxy's tasks run (and arm their timers) without moving the manual clock.
async fn settle() {
    tokio::time::sleep(ms(50)).await;
}

fn limits(
    settings: ProxySettings,
    response: u64,
    client_body: u64,
    server_body: u64,
) -> ProxySettings {
    ProxySettings {
        upstream_response_timeout: ms(response),
        client_body_idle_timeout: ms(client_body),
        upstream_body_idle_timeout: ms(server_body),
        ..settings
    }
}

type Answer = tokio::task::JoinHandle<Result<(http::response::Parts, String), TestError>>;

/// A backend, the proxy with `settings` in front of it, and an 8-byte POST to `/upload-gate`
/// of which the backend holds the first half: the rest comes through the returned sender.
async fn half_uploaded(
    settings: ProxySettings,
) -> Result<(Backend, Setup, Answer, tokio::sync::mpsc::Sender<Bytes>), TestError> {
    let b = backend().await?;
    let s = start(&[b.addr], None, settings)?;
    let (req, tx) = upload("/upload-gate", 8)?;
    let mut c = client(s.addr).await?;
    let waiting = tokio::spawn(async move { send(&mut c, req).await });
    tx.send(Bytes::from_static(b"abcd")).await?;
    assert!(upload_seen(&b.state, 4).await);
    Ok((b, s, waiting, tx))
}

#[test]
fn the_response_timeout_counts_from_the_end_of_the_request_body() -> TestResult {
    run(async {
        let (settings, manual) = manual_settings();
        let (b, s, waiting, tx) = half_uploaded(limits(settings, 300, 1000, 1000)).await?;
        // A slow upload: twice the response timeout passes, each pause under the body's idle
        // timeout. No 504: the server has not had the whole request yet.
        for _ in 0..3 {
            settle().await;
            manual.advance(ms(200));
        }
        settle().await;
        assert!(
            !waiting.is_finished(),
            "answered while the client was still uploading"
        );
        tx.send(Bytes::from_static(b"efgh")).await?;
        assert!(upload_seen(&b.state, 8).await);
        settle().await;
        manual.advance(ms(299));
        settle().await;
        assert!(!waiting.is_finished(), "504 before the response timeout");
        manual.advance(ms(1));
        let (parts, _) = waiting.await??;
        assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn a_client_that_pauses_in_its_request_body_gets_408() -> TestResult {
    run(async {
        let (settings, manual) = manual_settings();
        let (_b, s, waiting, tx) = half_uploaded(limits(settings, 10_000, 200, 10_000)).await?;
        settle().await;
        manual.advance(ms(199));
        settle().await;
        assert!(!waiting.is_finished(), "cut before the body idle timeout");
        manual.advance(ms(1));
        let (parts, _) = waiting.await??;
        assert_eq!(parts.status, StatusCode::REQUEST_TIMEOUT);
        drop(tx);
        let stats = s.proxy.stats();
        let vs = stats.vs("shop").ok_or_else(|| err("no vs stats"))?;
        assert_eq!(vs.responses[4], 0, "a client's pause is not a 5xx: {vs:?}");
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn a_server_that_pauses_in_its_response_body_is_cut() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let s = start(&[b.addr], None, limits(settings, 10_000, 10_000, 200))?;
        let mut c = client(s.addr).await?;
        c.ready().await?;
        let resp = c.send_request(get("/stall-body")?).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        let mut body = resp.into_body();
        let first = body.frame().await.ok_or_else(|| err("no first chunk"))??;
        assert_eq!(first.data_ref().map(|d| &d[..]), Some(&b"first "[..]));
        let rest = tokio::spawn(async move { body.frame().await.map(|f| f.is_ok()) });
        settle().await;
        manual.advance(ms(199));
        settle().await;
        assert!(!rest.is_finished(), "cut before the body idle timeout");
        manual.advance(ms(1));
        let cut = tokio::time::timeout(Duration::from_secs(5), rest).await??;
        assert_ne!(cut, Some(true), "the client got more of a stalled body");
        // The stalled connection is not pooled: the next request gets a fresh one.
        let before = b.state.connections.load(Ordering::SeqCst);
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(b.state.connections.load(Ordering::SeqCst), before + 1);
        b.state.gate.notify_one();
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn a_server_that_stops_reading_the_request_body_gets_504() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let s = start(&[b.addr], None, limits(settings, 10_000, 10_000, 200))?;
        // More than the socket buffers between proxy and server hold.
        let total = 64 * MIB as usize;
        let (req, tx) = upload("/ignore-body", total)?;
        let producer = tokio::spawn(async move {
            let chunk = Bytes::from(vec![b'u'; 256 * 1024]);
            for _ in 0..total / chunk.len() {
                if tx.send(chunk.clone()).await.is_err() {
                    return;
                }
            }
        });
        let mut c = client(s.addr).await?;
        let waiting = tokio::spawn(async move { send(&mut c, req).await });
        // Each step moves the clock by the idle timeout: the exchange is cut at the first
        // step in which no byte of the body moved while the client had more to give.
        let mut steps = 0;
        while !waiting.is_finished() && steps < 100 {
            settle().await;
            manual.advance(ms(200));
            steps += 1;
        }
        settle().await;
        assert!(
            waiting.is_finished(),
            "never cut after {steps} idle periods"
        );
        // The proxy answers 504 and closes; the client, still sending, may see the reset
        // before the answer. Either way the proxy counted a 5xx, put on the server.
        if let Ok(Ok((parts, _))) = waiting.await {
            assert_eq!(parts.status, StatusCode::GATEWAY_TIMEOUT);
        }
        assert!(
            wait_until(Duration::from_secs(2), || {
                s.proxy
                    .stats()
                    .vs("shop")
                    .is_some_and(|v| v.responses[4] == 1)
            })
            .await,
            "{:?}",
            s.proxy.stats().vs("shop")
        );
        producer.abort();
        b.state.gate.notify_one();
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn a_client_that_does_not_read_is_not_a_server_pause() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let s = start(&[b.addr], None, limits(settings, 10_000, 10_000, 200))?;
        let mut c = client(s.addr).await?;
        c.ready().await?;
        // More than the socket buffers between server, proxy and client hold.
        let total = 64 * MIB;
        let resp = c
            .send_request(get(&format!("/stream?bytes={total}"))?)
            .await?;
        assert_eq!(resp.status(), StatusCode::OK);
        // The client reads nothing for five idle timeouts: the proxy stops reading the server
        // (buffers full), and that wait is the client's, not a server pause.
        settle().await;
        for _ in 0..5 {
            manual.advance(ms(200));
            settle().await;
        }
        // Then it reads what the server sent; the server holds its last bytes, and the proxy
        // waits for them from now, not from the server's last frame long ago.
        let mut body = resp.into_body();
        let mut got = 0u64;
        while got < total {
            let frame = body
                .frame()
                .await
                .ok_or_else(|| err("body ended early"))??;
            got += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        settle().await;
        b.state.gate.notify_one();
        while let Some(frame) = body.frame().await {
            got += frame?.data_ref().map_or(0, |d| d.len() as u64);
        }
        assert_eq!(got, total + 3, "the body was cut");
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}
