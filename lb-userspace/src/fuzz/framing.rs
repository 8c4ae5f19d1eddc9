//! The HTTP/1.1 framing guard (`proxy/framing.rs`), on streams of pipelined requests built
//! from the fields that decide framing (Content-Length, Transfer-Encoding in their spellings,
//! chunked bodies with extensions and trailers, LF or CRLF), then mutated byte-wise and cut
//! into reads at random places.
//!
//! Properties:
//! - The watcher alone: the same verdicts and bytes however the stream is cut into reads; it
//!   changes no byte unless it refuses, and then only the last byte it lets through, to NUL.
//! - In front of hyper (as `proxy/conn.rs` puts it): hyper sees, with the guard, exactly the
//!   requests it sees without it up to the refused one (same heads, same bodies), so the
//!   guard never reads a message boundary where hyper does not.
//! - Unmutated streams: a request with both Content-Length and Transfer-Encoding never gets
//!   through, and a stream without one is never refused.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use latch_tests::fuzz::{self, Edit};

use crate::proxy::framing::{RequestFraming, RequestGuard};

const METHODS: &[&str] = &["GET", "POST", "PUT", "HEAD", "OPTIONS", "DELETE", "PATCH"];
const TARGETS: &[&str] = &["/", "/a?b=c", "/x/y%20z", "*", "http://h.example/p"];

/// How a header line is spelled.
#[derive(Clone, Debug)]
enum Field {
    /// Content-Length with this name spelling and value.
    Length(&'static str, &'static str),
    /// Transfer-Encoding with this name spelling and value.
    Coding(&'static str, &'static str),
    Other(&'static str, &'static str),
}

const LENGTH_NAMES: &[&str] = &["Content-Length", "content-length", "CONTENT-length"];
const LENGTH_VALUES: &[&str] = &[
    "0",
    "3",
    "5",
    "17",
    " 4 ",
    "004",
    "\t2",
    "+5",
    "5,5",
    "0x5",
    "",
    "-1",
    "1 2",
    "99999999999999999999",
    "18446744073709551615",
];
const CODING_NAMES: &[&str] = &[
    "Transfer-Encoding",
    "transfer-encoding",
    "TRANSFER-ENCODING",
];
const CODING_VALUES: &[&str] = &[
    "chunked",
    "gzip, chunked",
    " chunked ",
    "Chunked",
    "chunked, chunked",
    "identity",
    "chunked;q=1",
    "",
    "\tchunked",
    "chunked, gzip",
];
const OTHERS: &[(&str, &str)] = &[
    ("Host", "h.example"),
    ("Connection", "keep-alive"),
    ("Connection", "close"),
    ("TE", "trailers"),
    ("X-Transfer-Encoding", "chunked"),
    ("Content-Lengthy", "9"),
    ("Content-Type", "text/plain"),
    ("Expect", "100-continue"),
    ("Upgrade", "websocket"),
];

fn field() -> impl Strategy<Value = Field> {
    prop_oneof![
        (
            proptest::sample::select(LENGTH_NAMES),
            proptest::sample::select(LENGTH_VALUES)
        )
            .prop_map(|(n, v)| Field::Length(n, v)),
        (
            proptest::sample::select(CODING_NAMES),
            proptest::sample::select(CODING_VALUES)
        )
            .prop_map(|(n, v)| Field::Coding(n, v)),
        proptest::sample::select(OTHERS).prop_map(|(n, v)| Field::Other(n, v)),
    ]
}

#[derive(Clone, Debug)]
struct Chunk {
    data: Vec<u8>,
    upper: bool,
    zeros: u8,
    ext: Option<&'static str>,
}

#[derive(Clone, Debug)]
struct Message {
    blank_lines: u8,
    method: &'static str,
    target: &'static str,
    http10: bool,
    lf_only: bool,
    fields: Vec<Field>,
    chunks: Vec<Chunk>,
    trailers: Vec<&'static str>,
    /// Body bytes for a Content-Length body (cut or padded to the length).
    data: Vec<u8>,
}

/// A Content-Length value as RFC 9110 has it: digits, blanks around them.
fn length(v: &str) -> Option<u64> {
    let v = v.trim_matches([' ', '\t']);
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Body bytes that look like line ends and heads, so a watcher that loses count shows.
const BODY_BYTES: &[u8] = b"\r\n0:;aF Content-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\nGET";

fn body_bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(proptest::sample::select(BODY_BYTES), 0..max)
}

fn chunk() -> impl Strategy<Value = Chunk> {
    (
        body_bytes(24),
        any::<bool>(),
        0u8..3,
        proptest::option::of(proptest::sample::select(
            &[";a=b", "; x", " ;q=\"v\"", "\t"][..],
        )),
    )
        .prop_map(|(data, upper, zeros, ext)| Chunk {
            data,
            upper,
            zeros,
            ext,
        })
}

fn message() -> impl Strategy<Value = Message> {
    (
        (
            0u8..2,
            proptest::sample::select(METHODS),
            proptest::sample::select(TARGETS),
        ),
        (prop::bool::weighted(0.1), prop::bool::weighted(0.2)),
        proptest::collection::vec(field(), 0..5),
        proptest::collection::vec(chunk(), 0..3),
        proptest::collection::vec(
            proptest::sample::select(&["X-T: 1", "Content-Length: 9"][..]),
            0..2,
        ),
        body_bytes(20),
    )
        .prop_map(
            |((blank_lines, method, target), (http10, lf_only), fields, chunks, trailers, data)| {
                Message {
                    blank_lines,
                    method,
                    target,
                    http10,
                    lf_only,
                    fields,
                    chunks,
                    trailers,
                    data,
                }
            },
        )
}

impl Message {
    fn ambiguous(&self) -> bool {
        let length = self.fields.iter().any(|f| matches!(f, Field::Length(..)));
        let coding = self.fields.iter().any(|f| matches!(f, Field::Coding(..)));
        length && coding
    }

    /// Ambiguous, with a length that is not one run of digits, or with two different
    /// lengths: what the guard refuses.
    fn conflicting(&self) -> bool {
        let lengths: Vec<Option<u64>> = self
            .fields
            .iter()
            .filter_map(|f| match f {
                Field::Length(_, v) => Some(length(v)),
                _ => None,
            })
            .collect();
        self.ambiguous()
            || lengths.iter().any(Option::is_none)
            || lengths.windows(2).any(|w| w[0] != w[1])
    }

    fn write(&self, out: &mut Vec<u8>) {
        let eol: &[u8] = if self.lf_only { b"\n" } else { b"\r\n" };
        for _ in 0..self.blank_lines {
            out.extend_from_slice(eol);
        }
        let version = if self.http10 { "HTTP/1.0" } else { "HTTP/1.1" };
        out.extend_from_slice(format!("{} {} {version}", self.method, self.target).as_bytes());
        out.extend_from_slice(eol);
        let mut chunked = false;
        let mut length = None;
        for f in &self.fields {
            let (name, value) = match f {
                Field::Length(n, v) => {
                    length = length.or(self::length(v).and_then(|n| usize::try_from(n).ok()));
                    (n, v)
                }
                Field::Coding(n, v) => {
                    chunked = true;
                    (n, v)
                }
                Field::Other(n, v) => (n, v),
            };
            out.extend_from_slice(format!("{name}: {value}").as_bytes());
            out.extend_from_slice(eol);
        }
        out.extend_from_slice(eol);
        if chunked {
            for c in self.chunks.iter().filter(|c| !c.data.is_empty()) {
                let zeros = "0".repeat(usize::from(c.zeros));
                let size = if c.upper {
                    format!("{zeros}{:X}", c.data.len())
                } else {
                    format!("{zeros}{:x}", c.data.len())
                };
                out.extend_from_slice(size.as_bytes());
                out.extend_from_slice(c.ext.unwrap_or("").as_bytes());
                out.extend_from_slice(b"\r\n");
                out.extend_from_slice(&c.data);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n");
            for t in &self.trailers {
                out.extend_from_slice(t.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"\r\n");
        } else if let Some(n) = length {
            // A length beyond what a case holds gets the bytes there are (hyper waits for
            // more and meets the end of the stream).
            let mut data = self.data.clone();
            data.resize(n.min(256), b'z');
            out.extend_from_slice(&data);
        }
    }
}

/// Bytes that matter to framing.
const TOKENS: &[&[u8]] = &[
    b"\r\n",
    b"\n",
    b"\r",
    b"\r\n\r\n",
    b":",
    b";",
    b" ",
    b"\t",
    b"0",
    b"1",
    b"f",
    b"F",
    b"g",
    b"Content-Length: 2\r\n",
    b"Transfer-Encoding: chunked\r\n",
    b"\0",
    b"-",
    b",",
];

#[derive(Clone, Debug)]
struct Case {
    messages: Vec<Message>,
    edits: Vec<Edit>,
    cuts: Vec<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(message(), 1..4),
        prop_oneof![
            1 => Just(Vec::new()),
            2 => proptest::collection::vec(fuzz::edit(TOKENS), 1..4),
        ],
        proptest::collection::vec(any::<usize>(), 0..6),
    )
        .prop_map(|(messages, edits, cuts)| Case {
            messages,
            edits,
            cuts,
        })
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for m in &self.messages {
            m.write(&mut out);
        }
        fuzz::apply_all(&out, &self.edits)
    }

    /// The stream cut into reads at the case's cut points.
    fn reads(&self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut cuts: Vec<usize> = self
            .cuts
            .iter()
            .map(|c| if bytes.is_empty() { 0 } else { c % bytes.len() })
            .collect();
        cuts.sort_unstable();
        cuts.dedup();
        let mut reads = Vec::new();
        let mut start = 0;
        for c in cuts.into_iter().chain(std::iter::once(bytes.len())) {
            if c > start {
                reads.push(bytes[start..c].to_vec());
                start = c;
            }
        }
        reads
    }
}

/// The watcher over `reads`: the bytes hyper would see and whether it refused.
fn watch(reads: &[Vec<u8>]) -> (Vec<u8>, bool) {
    let mut w = RequestFraming::new();
    let mut seen = Vec::new();
    for r in reads {
        let mut r = r.clone();
        if let Some((_, keep)) = w.scan(&mut r) {
            seen.extend_from_slice(&r[..keep]);
            return (seen, true);
        }
        seen.extend_from_slice(&r);
    }
    (seen, false)
}

/// The client side of a connection: the reads, through the guard if there is one;
/// whatever hyper writes is dropped.
struct Feed {
    reads: VecDeque<Vec<u8>>,
    guard: Option<RequestGuard>,
    refused: Arc<Mutex<bool>>,
}

impl AsyncRead for Feed {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(g) = this.guard.as_mut()
            && g.owed(buf)
        {
            return Poll::Ready(Ok(()));
        }
        let Some(mut next) = this.reads.pop_front() else {
            return Poll::Ready(Ok(()));
        };
        let n = next.len().min(buf.remaining());
        let before = buf.filled().len();
        buf.put_slice(&next[..n]);
        if n < next.len() {
            this.reads.push_front(next.split_off(n));
        }
        if let Some(g) = this.guard.as_mut()
            && g.inspect(buf, before).is_some()
        {
            // As the connection's read side does after a refusal: hyper closes, nothing
            // more is read.
            this.reads.clear();
            if let Ok(mut r) = this.refused.lock() {
                *r = true;
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Feed {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// A request as the handler saw it: head and body (or how reading the body failed).
#[derive(Debug, PartialEq)]
struct Seen {
    head: String,
    body: Result<Vec<u8>, String>,
}

/// The requests hyper hands the service for `reads`, configured as `proxy/conn.rs` does,
/// and whether the guard refused.
fn serve(rt: &tokio::runtime::Runtime, reads: &[Vec<u8>], guarded: bool) -> (Vec<Seen>, bool) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let refused = Arc::new(Mutex::new(false));
    let feed = Feed {
        reads: reads.iter().cloned().collect(),
        guard: guarded.then(RequestGuard::new),
        refused: Arc::clone(&refused),
    };
    let log = Arc::clone(&seen);
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let log = Arc::clone(&log);
        async move {
            let (parts, body) = req.into_parts();
            let head = format!(
                "{} {} {:?} {:?}",
                parts.method, parts.uri, parts.version, parts.headers
            );
            let body = match body.collect().await {
                Ok(b) => Ok(b.to_bytes().to_vec()),
                Err(e) => Err(e.to_string()),
            };
            if let Ok(mut l) = log.lock() {
                l.push(Seen { head, body });
            }
            Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .header_read_timeout(None)
        .keep_alive(true)
        .max_headers(100)
        .max_buf_size(64 * 1024);
    let conn = builder.serve_connection(TokioIo::new(feed), service);
    let _ = rt.block_on(conn);
    let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
    let refused = *refused.lock().unwrap_or_else(|e| e.into_inner());
    (seen, refused)
}

/// Checks one stream; true when the guard refused a head in it.
fn check(rt: &tokio::runtime::Runtime, case: &Case) -> Result<bool, TestCaseError> {
    let bytes = case.bytes();
    let reads = case.reads(&bytes);

    // The watcher alone: however the stream is cut, the same outcome.
    let (whole, refused) = watch(std::slice::from_ref(&bytes));
    let (pieces, refused_in_pieces) = watch(&reads);
    prop_assert_eq!(refused, refused_in_pieces, "verdict depends on the reads");
    prop_assert!(whole == pieces, "bytes depend on the reads");
    if refused {
        let last = whole.len() - 1;
        prop_assert_eq!(
            &whole[..last],
            &bytes[..last],
            "a refusal changed an earlier byte"
        );
        prop_assert_eq!(whole[last], 0, "the refused head does not end in NUL");
    } else {
        prop_assert!(whole == bytes, "a byte changed without a refusal");
    }

    // In front of hyper.
    let (plain, _) = serve(rt, &reads, false);
    let (guarded, guard_refused) = serve(rt, &reads, true);
    // hyper may stop reading before the watcher's refusal (it closed after an earlier request).
    prop_assert!(
        !guard_refused || refused,
        "the guard refused what the watcher passed"
    );
    prop_assert!(
        guarded.len() <= plain.len() && plain[..guarded.len()] == guarded[..],
        "hyper saw other requests through the guard:\nwithout: {plain:#?}\nwith: {guarded:#?}"
    );
    if !refused {
        prop_assert_eq!(guarded.len(), plain.len());
    }

    if case.edits.is_empty() {
        if let Some(first) = case.messages.iter().position(Message::ambiguous) {
            prop_assert!(
                guarded.len() <= first,
                "request {first} (Content-Length and Transfer-Encoding) reached the handler"
            );
        }
        if !case.messages.iter().any(Message::conflicting) {
            prop_assert!(!refused, "a stream without a conflicting head was refused");
        }
    }
    Ok(refused)
}

#[test]
fn guard_in_front_of_hyper() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let refusals = AtomicU64::new(0);
    let report = fuzz::run("framing", case(), |c| {
        if check(&rt, &c)? {
            refusals.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    });
    println!(
        "fuzz framing: the guard refused a head in {} of {} streams",
        refusals.load(Ordering::Relaxed),
        report.cases
    );
}
