//! Header rewriting done by every proxy hop (RFC 9110 section 7.6), kept pure for tests.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The user name of a Basic `Authorization` header (RFC 7617), if there is a well-formed one:
/// the access log's user and avi.http.get_userid's default.
pub fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, credentials) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(credentials.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, _password) = decoded.split_once(':')?;
    Some(user.to_string())
}

/// Headers that describe one connection, never the message: they must not be forwarded.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHENTICATE,
];

/// `Keep-Alive`, hop-by-hop though not in the standard names of the `http` crate.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Whether `name` is hop-by-hop whatever `Connection` says: the fixed list, `Keep-Alive`
/// and every `Proxy-*` header.
fn always_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name) || *name == KEEP_ALIVE || name.as_str().starts_with("proxy-")
}

/// Removes hop-by-hop headers: the fixed list, `Keep-Alive`, every `Proxy-*` header, and the
/// headers the `Connection` header names. Transfer-Encoding framing is redone by hyper.
///
/// One pass over the message's names decides, where removing each hop-by-hop name would hash
/// and probe the map for all of them (eight or more lookups on every request and response,
/// about half a microsecond of CPU per request in the proxy profile); most messages carry at
/// most `Connection` of them.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // The names `Connection` lists beyond those removed anyway: usually none, as its usual
    // tokens are `keep-alive`, `close` (no header carries that name in practice, but one
    // that did would be removed) and `upgrade`.
    let listed: Vec<&str> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|token| {
            !token.is_empty()
                && HeaderName::from_bytes(token.as_bytes())
                    .is_ok_and(|name| !always_hop_by_hop(&name))
        })
        .collect();
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            always_hop_by_hop(name)
                || listed
                    .iter()
                    .any(|token| token.eq_ignore_ascii_case(name.as_str()))
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// The `Upgrade` header of a request that asks for one (`Connection: upgrade` with an
/// `Upgrade` protocol), e.g. `websocket`.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asked = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    asked
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// Puts back the two headers an upgrade needs after the hop-by-hop ones were removed.
pub fn set_upgrade(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::UPGRADE, protocol);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
}

/// Appends the client address to X-Forwarded-For (joining earlier values into one line, as
/// most backends read only one) and states whether the client spoke plain HTTP or HTTPS.
pub fn add_forwarded(headers: &mut HeaderMap, client: IpAddr, secure: bool) {
    use std::fmt::Write as _;
    let mut value = String::new();
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = prior.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                value.push_str(s);
                value.push_str(", ");
            }
        }
    }
    // Writing into a String cannot fail.
    let _ = write!(value, "{client}");
    // From the String's own buffer: no copy.
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(value)) {
        headers.insert(X_FORWARDED_FOR, v);
    }
    let proto = if secure { "https" } else { "http" };
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
}

/// Prepares request headers for the upstream hop.
pub fn prepare_request(headers: &mut HeaderMap, client: IpAddr, secure: bool) {
    strip_hop_by_hop(headers);
    // The proxy answered any 100-continue expectation itself when it read the body.
    headers.remove(header::EXPECT);
    add_forwarded(headers, client, secure);
}

/// Why a request is answered by the proxy instead of being forwarded, when its head is
/// well-formed HTTP but not something to pass on (RFC 9110 and 9112): `CONNECT` (latch is not
/// a forward proxy), two `Host` headers, or an HTTP/1.1 request without one (9112 section
/// 3.2: "MUST respond with a 400"; HTTP/2 carries the authority in `:authority` instead), a
/// transfer coding other than `chunked`.
pub fn refusal(
    method: &http::Method,
    version: http::Version,
    headers: &HeaderMap,
) -> Option<http::StatusCode> {
    if method == http::Method::CONNECT {
        return Some(http::StatusCode::METHOD_NOT_ALLOWED);
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && version == http::Version::HTTP_11) {
        return Some(http::StatusCode::BAD_REQUEST);
    }
    // hyper decodes the final `chunked` and the proxy re-frames the body, so any other coding
    // (`gzip, chunked`) would reach the server as unmarked compressed bytes: 501, as RFC 9112
    // section 6.1 says for a coding the recipient does not implement.
    let other_coding = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("?").split(','))
        .any(|coding| !coding.trim().eq_ignore_ascii_case("chunked"));
    other_coding.then_some(http::StatusCode::NOT_IMPLEMENTED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_two_hosts_and_a_hostless_http11_request_are_refused() {
        use http::{Method, StatusCode, Version};
        let one = map(&[("host", "shop")]);
        let two = map(&[("host", "shop"), ("host", "evil")]);
        let none = map(&[]);
        assert_eq!(refusal(&Method::GET, Version::HTTP_11, &one), None);
        assert_eq!(
            refusal(&Method::GET, Version::HTTP_11, &two),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refusal(&Method::GET, Version::HTTP_11, &none),
            Some(StatusCode::BAD_REQUEST)
        );
        // HTTP/1.0 may leave Host out; HTTP/2 has :authority.
        assert_eq!(refusal(&Method::GET, Version::HTTP_10, &none), None);
        assert_eq!(refusal(&Method::GET, Version::HTTP_2, &none), None);
        assert_eq!(
            refusal(&Method::GET, Version::HTTP_2, &two),
            Some(StatusCode::BAD_REQUEST)
        );
        assert_eq!(
            refusal(&Method::CONNECT, Version::HTTP_11, &one),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        let chunked = map(&[("host", "shop"), ("transfer-encoding", "Chunked")]);
        assert_eq!(refusal(&Method::POST, Version::HTTP_11, &chunked), None);
        let gzip = map(&[("host", "shop"), ("transfer-encoding", "gzip, chunked")]);
        assert_eq!(
            refusal(&Method::POST, Version::HTTP_11, &gzip),
            Some(StatusCode::NOT_IMPLEMENTED)
        );
    }

    fn map(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn hop_by_hop_headers_are_removed_and_others_kept() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("trailer", "x-sum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("proxy-authorization", "basic x"),
            ("proxy-connection", "keep-alive"),
            ("host", "shop.example"),
            ("cookie", "a=1"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        left.sort();
        assert_eq!(left, vec!["content-length", "cookie", "host"]);
    }

    #[test]
    fn a_message_without_hop_by_hop_headers_keeps_every_header() {
        let mut h = map(&[
            ("host", "shop.example"),
            ("cookie", "a=1"),
            ("x-secret", "1"),
            ("proxy", "not a proxy- header"),
        ]);
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
        // A name `Connection` lists goes whatever its case, with every value of it.
        let mut h = map(&[
            ("connection", "X-Secret"),
            ("connection", "close"),
            ("x-secret", "1"),
            ("x-secret", "2"),
            ("close", "named too"),
            ("host", "shop.example"),
        ]);
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str().to_owned()).collect();
        assert_eq!(left, vec!["host"]);
    }

    #[test]
    fn upgrade_needs_the_connection_token_and_the_protocol() {
        let ws = map(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "websocket"),
        ]);
        assert_eq!(
            requested_upgrade(&ws),
            Some(HeaderValue::from_static("websocket"))
        );
        assert_eq!(requested_upgrade(&map(&[("upgrade", "websocket")])), None);
        assert_eq!(requested_upgrade(&map(&[("connection", "upgrade")])), None);
        let mut h = ws.clone();
        strip_hop_by_hop(&mut h);
        set_upgrade(&mut h, HeaderValue::from_static("websocket"));
        assert_eq!(
            h.get("connection").map(|v| v.as_bytes()),
            Some(&b"upgrade"[..])
        );
        assert_eq!(
            h.get("upgrade").map(|v| v.as_bytes()),
            Some(&b"websocket"[..])
        );
    }

    #[test]
    fn forwarded_for_appends_to_existing_values() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.7"),
            ("x-forwarded-for", "10.0.0.1"),
        ]);
        add_forwarded(
            &mut h,
            "198.51.100.2".parse().unwrap_or(IpAddr::from([0; 4])),
            false,
        );
        assert_eq!(
            h.get("x-forwarded-for").and_then(|v| v.to_str().ok()),
            Some("203.0.113.7, 10.0.0.1, 198.51.100.2")
        );
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(
            h.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"http"[..])
        );

        let mut fresh = HeaderMap::new();
        prepare_request(&mut fresh, IpAddr::from([127, 0, 0, 1]), true);
        assert_eq!(
            fresh.get("x-forwarded-for").map(|v| v.as_bytes()),
            Some(&b"127.0.0.1"[..])
        );
        assert_eq!(
            fresh.get("x-forwarded-proto").map(|v| v.as_bytes()),
            Some(&b"https"[..])
        );
    }
}
