//! HTTP_REQ_DATA, HTTP_RESP_DATA, HTTP_RESP_FAILED and HTTP_LB_DONE as the proxy drives them:
//! bodies are buffered only for hooks that ask, within their limit.

use super::*;

/// What [`EventHooks`] do, and what they saw.
#[derive(Default)]
struct EventPlan {
    request_limit: Option<usize>,
    response_limit: Option<usize>,
    /// Answer HTTP_LB_DONE with 503 instead of sending the request.
    refuse_at_lb_done: bool,
    /// Answer HTTP_RESP_FAILED with 503 "sorry".
    answer_failures: bool,
    /// Events in the order they came, with what they were given.
    seen: std::sync::Mutex<Vec<String>>,
}

impl EventPlan {
    fn note(&self, what: String) {
        if let Ok(mut s) = self.seen.lock() {
            s.push(what);
        }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

struct EventHooks(Arc<EventPlan>);

impl HookFactory for EventHooks {
    fn begin(&self, _info: TxnInfo) -> Box<dyn TxnHooks> {
        Box::new(EventTxn(self.0.clone()))
    }
}

struct EventTxn(Arc<EventPlan>);

impl TxnHooks for EventTxn {
    fn on_request(&mut self, _request: &mut http::request::Parts) -> RequestVerdict {
        RequestVerdict::Forward(Selection::default())
    }

    fn request_body_limit(&self) -> Option<usize> {
        self.0.request_limit
    }

    fn on_request_body(
        &mut self,
        request: &mut http::request::Parts,
        body: &Bytes,
    ) -> RequestVerdict {
        self.0.note(format!("req_data {}", body.len()));
        if body.starts_with(b"block") {
            return RequestVerdict::Respond(respond(StatusCode::FORBIDDEN, "body refused"));
        }
        request
            .headers
            .insert("x-body-len", http::HeaderValue::from(body.len()));
        RequestVerdict::Forward(Selection::default())
    }

    fn on_lb_done(&mut self, server: SocketAddr) -> Option<http::Response<Bytes>> {
        self.0.note(format!("lb_done {server}"));
        self.0
            .refuse_at_lb_done
            .then(|| respond(StatusCode::SERVICE_UNAVAILABLE, "not now"))
    }

    fn on_response_failed(&mut self, status: StatusCode) -> Option<http::Response<Bytes>> {
        self.0.note(format!("resp_failed {}", status.as_u16()));
        self.0
            .answer_failures
            .then(|| respond(StatusCode::SERVICE_UNAVAILABLE, "sorry"))
    }

    fn on_response(
        &mut self,
        _response: &mut http::response::Parts,
        _server: SocketAddr,
    ) -> ResponseVerdict {
        ResponseVerdict::Continue
    }

    fn response_body_limit(&self) -> Option<usize> {
        self.0.response_limit
    }

    fn on_response_body(
        &mut self,
        response: &mut http::response::Parts,
        body: &Bytes,
    ) -> ResponseVerdict {
        self.0.note(format!("resp_data {}", body.len()));
        if body.starts_with(b"no such path") {
            return ResponseVerdict::Respond(respond(StatusCode::GONE, "replaced after body"));
        }
        response
            .headers
            .insert("x-body-len", http::HeaderValue::from(body.len()));
        ResponseVerdict::Continue
    }
}

fn plan_hooks(plan: EventPlan) -> (Arc<EventPlan>, Option<Arc<dyn HookFactory>>) {
    let plan = Arc::new(plan);
    (plan.clone(), Some(Arc::new(EventHooks(plan))))
}

fn post(path: &str, body: impl Into<Bytes>) -> Result<Request<ClientBody>, TestError> {
    Ok(Request::post(path)
        .header("host", "shop.example")
        .body(Full::new(body.into()).boxed_unsync())?)
}

#[test]
fn request_bodies_are_buffered_for_req_data_within_the_limit() -> TestResult {
    run(async {
        let b = backend().await?;
        let (plan, hooks) = plan_hooks(EventPlan {
            request_limit: Some(64 * 1024),
            ..EventPlan::default()
        });
        let s = start(&[b.addr], hooks, settings())?;
        let mut c = client(s.addr).await?;

        // No body, no HTTP_REQ_DATA.
        let (parts, _) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        let (parts, body) = send(&mut c, post("/upload", vec![b'u'; 10_000])?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.starts_with("bytes=10000 "), "{body}");
        let (parts, body) = send(&mut c, post("/headers", "hello")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.contains("x-body-len: 5\n"), "{body}");

        let (parts, body) = send(&mut c, post("/upload", "block this")?).await?;
        assert_eq!(parts.status, StatusCode::FORBIDDEN);
        assert_eq!(body, "body refused");
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 3);

        // One byte over the limit: 413, the backend never asked, the connection closed.
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, post("/upload", vec![b'u'; 64 * 1024 + 1])?).await?;
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(
            parts.headers.get("connection").map(|v| v.as_bytes()),
            Some(&b"close"[..])
        );
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 3);
        // Chunked, without a length known up front: refused as well.
        let chunks = futures_util::stream::iter(
            (0..3).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'c'; 30_000])))),
        );
        let req = Request::post("/upload")
            .header("host", "shop.example")
            .body(StreamBody::new(chunks).boxed_unsync())?;
        let mut c = client(s.addr).await?;
        let (parts, _) = send(&mut c, req).await?;
        assert_eq!(parts.status, StatusCode::PAYLOAD_TOO_LARGE);
        let seen = plan.seen();
        let data: Vec<&String> = seen.iter().filter(|e| e.starts_with("req_data")).collect();
        assert_eq!(data, ["req_data 10000", "req_data 5", "req_data 10"]);
        // The server is chosen after the body: only forwarded requests met HTTP_LB_DONE.
        assert_eq!(seen.iter().filter(|e| e.starts_with("lb_done")).count(), 3);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn hooks_that_ask_for_no_body_keep_it_streaming() -> TestResult {
    run(async {
        let b = backend().await?;
        let (plan, hooks) = plan_hooks(EventPlan::default());
        let s = start(&[b.addr], hooks, settings())?;
        // The second chunk only goes once the backend has the first: a buffering proxy would
        // never forward the first.
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let req = Request::post("/upload")
            .header("host", "shop.example")
            .header("content-length", "2000")
            .body(StreamBody::new(stream).boxed_unsync())?;
        let mut c = client(s.addr).await?;
        let state = b.state.clone();
        let producer = tokio::spawn(async move {
            tx.send(Bytes::from(vec![b'a'; 1000]))
                .await
                .map_err(|_| "dropped")?;
            let seen = wait_until(Duration::from_secs(10), || {
                state.upload_seen.load(Ordering::SeqCst) >= 1000
            })
            .await;
            if !seen {
                return Err("the backend did not get the first chunk before the second");
            }
            tx.send(Bytes::from(vec![b'b'; 1000]))
                .await
                .map_err(|_| "dropped")?;
            Ok(())
        });
        let (parts, body) = send(&mut c, req).await?;
        producer.await?.map_err(err)?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(body.starts_with("bytes=2000 "), "{body}");
        // HTTP_LB_DONE ran; no body event did.
        assert_eq!(plan.seen(), [format!("lb_done {}", b.addr)]);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn response_bodies_are_buffered_for_resp_data_within_the_limit() -> TestResult {
    run(async {
        let b = backend().await?;
        let (plan, hooks) = plan_hooks(EventPlan {
            response_limit: Some(1000),
            ..EventPlan::default()
        });
        let s = start(&[b.addr], hooks, settings())?;
        let mut c = client(s.addr).await?;
        let (parts, body) = send(&mut c, get("/slow?ms=1")?).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert_eq!(body, "slow done");
        assert_eq!(
            parts.headers.get("x-body-len").map(|v| v.as_bytes()),
            Some(&b"9"[..])
        );
        // No body (HEAD), no HTTP_RESP_DATA.
        let head = Request::head("/slow?ms=1")
            .header("host", "shop.example")
            .body(Empty::new().boxed_unsync())?;
        let (parts, _) = send(&mut c, head).await?;
        assert_eq!(parts.status, StatusCode::OK);
        assert!(parts.headers.get("x-body-len").is_none());
        let (parts, body) = send(&mut c, get("/missing")?).await?;
        assert_eq!(parts.status, StatusCode::GONE);
        assert_eq!(body, "replaced after body");
        // The body was read whole each time: the server connection was reused.
        assert_eq!(b.state.connections.load(Ordering::SeqCst), 1);

        // Beyond the limit: 502.
        let (parts, _) = send(&mut c, get("/download?bytes=5000")?).await?;
        assert_eq!(parts.status, StatusCode::BAD_GATEWAY);
        let seen = plan.seen();
        let data: Vec<&String> = seen.iter().filter(|e| e.starts_with("resp_data")).collect();
        assert_eq!(data, ["resp_data 9", "resp_data 12"]);
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn lb_done_runs_before_the_request_goes_and_may_answer() -> TestResult {
    run(async {
        let b = backend().await?;
        let (plan, hooks) = plan_hooks(EventPlan {
            refuse_at_lb_done: true,
            ..EventPlan::default()
        });
        let s = start(&[b.addr], hooks, settings())?;
        let mut c = client(s.addr).await?;
        let (parts, body) = send(&mut c, get("/headers")?).await?;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "not now");
        assert_eq!(b.state.requests.load(Ordering::SeqCst), 0);
        assert_eq!(plan.seen(), [format!("lb_done {}", b.addr)]);
        let requests = s.proxy.stats().server(b.addr).map_or(0, |st| st.requests);
        assert_eq!(
            requests, 0,
            "a request answered at HTTP_LB_DONE is not the server's"
        );
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}

#[test]
fn resp_failed_runs_on_a_dead_server_and_may_answer() -> TestResult {
    run(async {
        let dead = dead_addr().await?;
        for answer in [false, true] {
            let (plan, hooks) = plan_hooks(EventPlan {
                answer_failures: answer,
                ..EventPlan::default()
            });
            let s = start(&[dead], hooks, settings())?;
            let mut c = client(s.addr).await?;
            let (parts, body) = send(&mut c, get("/headers")?).await?;
            if answer {
                assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
                assert_eq!(body, "sorry");
            } else {
                assert_eq!(
                    parts.status,
                    StatusCode::BAD_GATEWAY,
                    "the proxy's own answer"
                );
            }
            assert_eq!(plan.seen(), ["resp_failed 502"]);
            // No server up is not a server failure: no HTTP_RESP_FAILED.
            s.picker.set_up(dead, false);
            let (parts, _) = send(&mut c, get("/headers")?).await?;
            assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(plan.seen().len(), 1);
            s.proxy.shutdown(Duration::from_secs(1)).await;
        }
        Ok(())
    })
}

#[test]
fn resp_failed_runs_on_a_timeout() -> TestResult {
    run(async {
        let b = backend().await?;
        let (settings, manual) = manual_settings();
        let settings = ProxySettings {
            upstream_response_timeout: ms(300),
            ..settings
        };
        let (plan, hooks) = plan_hooks(EventPlan {
            answer_failures: true,
            ..EventPlan::default()
        });
        let s = start(&[b.addr], hooks, settings)?;
        let mut c = client(s.addr).await?;
        let waiting = tokio::spawn(async move { send(&mut c, get("/gate")?).await });
        assert!(requests_seen(&b.state, 1).await);
        manual.advance(ms(300));
        let (parts, body) = waiting.await??;
        assert_eq!(parts.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "sorry");
        assert_eq!(
            plan.seen(),
            [format!("lb_done {}", b.addr), "resp_failed 504".to_string()]
        );
        s.proxy.shutdown(Duration::from_secs(1)).await;
        Ok(())
    })
}
