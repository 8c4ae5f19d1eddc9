//! avi.utils, avi.crypto, Avi's string extensions and the avi.* constants: documented types
//! and values, and the choices the README writes down where Avi is silent.

use super::*;
use crate::config::GeoDatabase;
use latch_tests::mmdb::{Value as Mv, country, ipv4_database};

/// What a request script logged, one `avi.vs.log` call per line.
fn log_of(script: &str) -> String {
    eval_req(script, "/", &[])
}

/// `pcall(f, ...)` results as a script logs them: `false <message>` or `true <values>`.
fn pcall_log(call: &str) -> String {
    log_of(&format!("avi.vs.log(pcall({call}))"))
}

// ---- avi.utils: encodings --------------------------------------------------------------------

#[test]
fn base64_encodes_and_decodes_strings() {
    let log = log_of(
        r#"local e = avi.utils.base64_encode("alice:secret")
           avi.vs.log(type(e), e, avi.utils.base64_decode(e))
           avi.vs.log(avi.utils.base64_encode(""), avi.utils.base64_encode(443))
           avi.vs.log(avi.utils.base64_decode("YWxpY2U"), avi.utils.base64_decode("YWxpY2U="))
           avi.vs.log(avi.utils.base64_decode("not base64!"))"#,
    );
    assert_eq!(
        log,
        "string YWxpY2U6c2VjcmV0 alice:secret\n NDQz\nalice alice\nnil"
    );
}

#[test]
fn base64_decode_of_the_documented_basic_auth_example() {
    // The Avi example: user name from "Authorization: Basic ...".
    let log = eval_req(
        r#"local h = avi.http.get_header("Authorization")
           if string.beginswith(h, "Basic ") then
             local decoded = avi.utils.base64_decode(string.sub(h, 7))
             avi.vs.log(string.sub(decoded, 0, string.find(decoded, ":") - 1))
           end"#,
        "/",
        &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
    );
    assert_eq!(log, "alice");
    // Without the header the example must not fail: beginswith(nil, ...) is false.
    assert_eq!(
        eval_req(
            r#"avi.vs.log(string.beginswith(avi.http.get_header("Authorization"), "Basic "))"#,
            "/",
            &[]
        ),
        "false"
    );
}

#[test]
fn uri_encode_escapes_all_but_unreserved_and_uri_decode_reverses_it() {
    let log = log_of(
        r#"local e = avi.utils.uri_encode("a b/c?d=é&x~y-z_.")
           avi.vs.log(type(e), e, avi.utils.uri_decode(e))
           avi.vs.log(avi.utils.uri_decode("a+b%2Bc%zz%41"))"#,
    );
    assert_eq!(
        log,
        "string a%20b%2Fc%3Fd%3D%C3%A9%26x~y-z_. a b/c?d=é&x~y-z_.\na+b+c%zzA"
    );
}

#[test]
fn encoding_functions_name_a_bad_argument() {
    let log = pcall_log("avi.utils.base64_encode, nil");
    assert_eq!(
        log,
        "false bad argument #1 to 'base64_encode' (string expected, got nil)"
    );
    let log = pcall_log("avi.utils.uri_decode, {}");
    assert_eq!(
        log,
        "false bad argument #1 to 'uri_decode' (string expected, got table)"
    );
}

// ---- avi.utils: hashes -----------------------------------------------------------------------

#[test]
fn hashes_are_lower_case_hex_strings() {
    // echo -n hello | md5sum / sha1sum / sha256sum
    let log = log_of(
        r#"local m, s1, s2 = avi.utils.md5_hash("hello"), avi.utils.sha1_hash("hello"),
              avi.utils.sha256_hash("hello")
           avi.vs.log(type(m), type(s1), type(s2))
           avi.vs.log(m) avi.vs.log(s1) avi.vs.log(s2)
           avi.vs.log(avi.utils.md5_hash(""))"#,
    );
    assert_eq!(
        log,
        "string string string\n\
         5d41402abc4b2a76b9719d911017c592\n\
         aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d\n\
         2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n\
         d41d8cd98f00b204e9800998ecf8427e"
    );
}

#[test]
fn murmur_hash_is_murmur3_32_as_a_number() {
    // Reference values of MurmurHash3_x86_32 with seed 0.
    let log = log_of(
        r#"local h = avi.utils.murmur_hash("hello")
           avi.vs.log(type(h), h, avi.utils.murmur_hash(""),
              avi.utils.murmur_hash("The quick brown fox jumps over the lazy dog"), h % 100)"#,
    );
    assert_eq!(log, "number 613153351 0 776992547 51");
}

// ---- avi.utils: random bytes -----------------------------------------------------------------

#[test]
fn rand_bytes_returns_that_many_fresh_bytes() {
    let log = log_of(
        r#"local a, b = avi.utils.rand_bytes(16), avi.utils.rand_bytes(16)
           avi.vs.log(type(a), #a, #b, a ~= b, avi.utils.rand_bytes(0) == "",
              #avi.utils.rand_bytes(4096))"#,
    );
    assert_eq!(log, "string 16 16 true true 4096");
}

#[test]
fn rand_bytes_refuses_a_size_out_of_bounds() {
    for arg in ["4097", "-1", "1.5", "'x'", "nil"] {
        let log = pcall_log(&format!("avi.utils.rand_bytes, {arg}"));
        assert_eq!(
            log, "false bad argument #1 to 'rand_bytes' (integer 0..4096 expected)",
            "{arg}"
        );
    }
}

// ---- avi.utils: addresses --------------------------------------------------------------------

#[test]
fn ip_in_subnet_takes_a_prefix_or_a_network_and_mask() {
    let log = log_of(
        r#"local f = avi.utils.ip_in_subnet
           avi.vs.log(f("192.0.2.7", "192.0.2.0/24"), f("198.51.100.1", "192.0.2.0/24"))
           avi.vs.log(f("192.0.2.7", "192.0.2.0", "255.255.255.0"), f("192.0.2.7", "192.0.2.0", 24),
              f("192.0.2.7", "192.0.2.0", "24"), f("192.0.3.7", "192.0.2.0", 24))
           avi.vs.log(f("2001:db8::1", "2001:db8::/32"), f("2001:db9::1", "2001:db8::/32"),
              f("192.0.2.7", "2001:db8::/32"))
           avi.vs.log(f(nil, "192.0.2.0/24"), f("no address", "192.0.2.0/24"),
              f(avi.vs.client_ip(), "203.0.113.0/24"))"#,
    );
    assert_eq!(
        log,
        "true false\ntrue true true false\ntrue false false\nfalse false true"
    );
}

#[test]
fn ip_in_subnet_refuses_a_subnet_that_is_none() {
    let log = pcall_log(r#"avi.utils.ip_in_subnet, "192.0.2.1", "192.0.2.0/99""#);
    assert_eq!(
        log,
        "false bad argument #2 to 'ip_in_subnet' (not a subnet: '192.0.2.0/99')"
    );
    let log = pcall_log(r#"avi.utils.ip_in_subnet, "192.0.2.1", "192.0.2.0", "255.0.255.0""#);
    assert_eq!(
        log,
        "false bad argument #3 to 'ip_in_subnet' (prefix length or netmask expected)"
    );
}

#[test]
fn ip_netaddr_is_the_network_address() {
    let log = log_of(
        r#"local n = avi.utils.ip.netaddr
           avi.vs.log(n("192.0.2.77", "255.255.255.0"), n("192.0.2.77", 16),
              n("2001:db8:1:2::5", 32))
           local ok, err = pcall(function() avi.utils.ip.netaddr = nil end)
           avi.vs.log(ok, err)"#,
    );
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("192.0.2.0 192.0.0.0 2001:db8::"));
    let denied = lines.next().unwrap_or_default();
    assert!(
        denied.starts_with("false ")
            && denied.ends_with("attempt to modify read-only table 'avi.utils.ip'"),
        "{denied}"
    );
}

// ---- avi.utils: geo database -----------------------------------------------------------------

fn names(en: &'static str) -> Mv {
    Mv::Map(vec![("en", Mv::Str(en))])
}

/// A City-style database: 192.0.2.0/24 fully described, 198.51.100.0/24 a country only.
fn geo_fixture() -> tempfile::NamedTempFile {
    let db = ipv4_database(&[
        (
            "192.0.2.0/24",
            Mv::Map(vec![
                (
                    "country",
                    Mv::Map(vec![
                        ("iso_code", Mv::Str("US")),
                        ("names", names("United States")),
                    ]),
                ),
                (
                    "continent",
                    Mv::Map(vec![
                        ("code", Mv::Str("NA")),
                        ("names", names("North America")),
                    ]),
                ),
                ("city", Mv::Map(vec![("names", names("Springfield"))])),
                (
                    "subdivisions",
                    Mv::Array(vec![Mv::Map(vec![
                        ("iso_code", Mv::Str("IL")),
                        ("names", names("Illinois")),
                    ])]),
                ),
                ("postal", Mv::Map(vec![("code", Mv::Str("62701"))])),
                (
                    "location",
                    Mv::Map(vec![
                        ("latitude", Mv::Double(39.8)),
                        ("longitude", Mv::Double(-89.6)),
                    ]),
                ),
                ("autonomous_system_number", Mv::U32(64500)),
                ("autonomous_system_organization", Mv::Str("Example AS")),
            ]),
        ),
        ("198.51.100.0/24", country("DE", "Germany")),
    ]);
    let mut f = tempfile::Builder::new()
        .suffix(".mmdb")
        .tempfile()
        .expect("temp file");
    std::io::Write::write_all(&mut f, &db).expect("write fixture");
    f
}

fn geo_log(script: &str) -> String {
    let file = geo_fixture();
    let geo = GeoDatabase::open(file.path()).expect("fixture is a MaxMind DB");
    let f = fixture_with_geo(vec![src(Event::HttpReq, script)], limits(), Some(geo));
    let (t, v, _) = run_req(&f, "/", &[]);
    forward(v);
    t.log_output().unwrap_or_default()
}

#[test]
fn get_geo_from_ip_gives_the_country_code_by_default() {
    let log = geo_log(
        r#"local g = avi.utils.get_geo_from_ip
           avi.vs.log(type(g("192.0.2.7")), g("192.0.2.7"), g("198.51.100.9"))
           avi.vs.log(g("203.0.113.1"), g("not an address"), g(nil), g("2001:db8::1"))"#,
    );
    assert_eq!(log, "string US DE\nnil nil nil nil");
}

#[test]
fn get_geo_from_ip_flags_pick_other_fields() {
    let log = geo_log(
        r#"local g = avi.utils.get_geo_from_ip
           local ip = "192.0.2.7"
           avi.vs.log(g(ip, "country_name"), g(ip, "COUNTRY_CODE"), g(ip, "continent_code"))
           avi.vs.log(g(ip, "continent_name"), g(ip, "city"), g(ip, "region"), g(ip, "region_code"))
           avi.vs.log(g(ip, "postal_code"), g(ip, "latitude"), g(ip, "longitude"))
           avi.vs.log(type(g(ip, "asn")), g(ip, "asn"), g(ip, "as_org"))
           avi.vs.log(g("198.51.100.9", "city"), g("198.51.100.9", "country_name"))"#,
    );
    assert_eq!(
        log,
        "United States US NA\nNorth America Springfield Illinois IL\n62701 39.8 -89.6\n\
         number 64500 Example AS\nnil Germany"
    );
}

#[test]
fn get_geo_from_ip_refuses_an_unknown_flag_and_a_missing_database() {
    let log = geo_log(r#"avi.vs.log(pcall(avi.utils.get_geo_from_ip, "192.0.2.7", "planet"))"#);
    assert!(
        log.starts_with(
            "false bad argument #2 to 'get_geo_from_ip' (unknown flag 'planet'; one of country_code, "
        ),
        "{log}"
    );
    for ip in [r#""192.0.2.7""#, "nil"] {
        assert_eq!(
            pcall_log(&format!("avi.utils.get_geo_from_ip, {ip}")),
            "false get_geo_from_ip: no geo database configured ([agent.datascript] geo_database)"
        );
    }
}

#[test]
fn geo_database_is_loaded_with_the_config_and_refused_with_its_location() {
    let db = geo_fixture();
    let dir = tempfile::tempdir().expect("dir");
    let config_path = dir.path().join("latch.toml");
    let text = |geo: &str| {
        format!(
            "[agent.datascript]\ngeo_database = \"{geo}\"\n\n\
             [[pool]]\nname = \"web\"\nservers = [\"192.0.2.11:8080\"]\n"
        )
    };
    let config = crate::config::parse(&text(&db.path().display().to_string()), &config_path)
        .expect("valid config");
    let geo = config
        .agent
        .datascript
        .geo_database
        .expect("geo database loaded");
    assert_eq!(geo.path(), db.path());
    assert_eq!(geo.reader().metadata().database_type, "latch-test-City");

    let errors = crate::config::parse(&text("missing.mmdb"), &config_path)
        .expect_err("missing file")
        .to_string();
    assert!(
        errors.contains("latch.toml:2:16: cannot read geo database ")
            && errors.contains("missing.mmdb"),
        "{errors}"
    );
    let not_mmdb = dir.path().join("not.mmdb");
    std::fs::write(&not_mmdb, b"plain text").expect("write");
    let errors = crate::config::parse(&text("not.mmdb"), &config_path)
        .expect_err("not a database")
        .to_string();
    assert!(
        errors.contains("latch.toml:2:16: geo database ")
            && errors.contains("is not a MaxMind DB file"),
        "{errors}"
    );
}

// ---- avi.crypto ------------------------------------------------------------------------------

/// Encrypts in a script and logs the ciphertext in base64 and its decryption.
fn crypto_log(args: &str) -> String {
    log_of(&format!(
        r#"local ct = avi.crypto.encrypt({args})
           avi.vs.log(type(ct), avi.utils.base64_encode(ct))
           local key, iv, algo = select(2, {args})
           avi.vs.log(avi.crypto.decrypt(ct, key, iv, algo))"#
    ))
}

#[test]
fn aes_cbc_matches_openssl() {
    // printf 'hello avi' | openssl enc -aes-128-cbc -K 30313233343536373839616263646566 \
    //   -iv 30313233343536373839303132333435 | base64
    assert_eq!(
        crypto_log(r#""hello avi", "0123456789abcdef""#),
        "string CtchlGhFWz/EHBt0dCZ94A==\nhello avi"
    );
    // The same with -aes-256-cbc and the 32-byte key "0123456789abcdef0123456789abcdef".
    assert_eq!(
        crypto_log(r#""hello avi", "0123456789abcdef0123456789abcdef""#),
        "string IYq01Eb4vBasFg87YxDIPg==\nhello avi"
    );
    // printf 'user=alice;role=admin' | openssl enc -aes-192-cbc \
    //   -K $(printf 0123456789abcdef01234567 | xxd -p -c 64) \
    //   -iv $(printf abcdefghijklmnop | xxd -p) | base64
    assert_eq!(
        crypto_log(
            r#""user=alice;role=admin", "0123456789abcdef01234567", "abcdefghijklmnop", avi.CIPHER_AES"#
        ),
        "string wsw6SPKb1BHrpI9GDz5qzD6MGDf0a/3UtfO1OJ4XyOE=\nuser=alice;role=admin"
    );
    // A full block of plaintext gets a full block of padding (PKCS#7), an empty one a block:
    // printf '0123456789abcdef' | openssl enc -aes-128-cbc -K ... -iv ... | base64
    assert_eq!(
        crypto_log(r#""0123456789abcdef", "0123456789abcdef""#),
        "string IcfUF4G4JoAnzXegrvBUTbOaMEw9rUTRTl4SoOLwKRU=\n0123456789abcdef"
    );
    // printf '' | openssl enc -aes-256-cbc -K (the 32-byte key) -iv ... | base64
    assert_eq!(
        crypto_log(r#""", "0123456789abcdef0123456789abcdef""#),
        "string LX2g/uymv10ys7ROO+KgSg==\n"
    );
}

#[test]
fn triple_des_cbc_matches_openssl_with_the_first_8_bytes_of_the_default_iv() {
    // printf 'hello avi' | openssl enc -des-ede3-cbc \
    //   -K $(printf 0123456789abcdef01234567 | xxd -p -c 64) -iv $(printf 01234567 | xxd -p) | base64
    assert_eq!(
        crypto_log(r#""hello avi", "0123456789abcdef01234567", nil, avi.CIPHER_3DES"#),
        "string 3rAEF2IX0g0sn9xw6LZqmw==\nhello avi"
    );
    assert_eq!(
        crypto_log(
            r#""hello avi", "0123456789abcdef01234567", "0123456789012345", avi.CIPHER_3DES"#
        ),
        "string 3rAEF2IX0g0sn9xw6LZqmw==\nhello avi"
    );
}

#[test]
fn crypto_uses_the_first_block_of_a_longer_iv() {
    let log = log_of(
        r#"local k = "0123456789abcdef"
           avi.vs.log(avi.crypto.encrypt("x", k, "abcdefghijklmnopEXTRA") ==
              avi.crypto.encrypt("x", k, "abcdefghijklmnop"))"#,
    );
    assert_eq!(log, "true");
}

#[test]
fn decrypt_of_data_that_does_not_decrypt_is_nil_and_a_message() {
    let log = log_of(
        r#"local k = "0123456789abcdef"
           avi.vs.log(avi.crypto.decrypt("short", k))
           avi.vs.log(avi.crypto.decrypt(avi.crypto.encrypt("secret", k), "fedcba9876543210"))
           avi.vs.log(avi.crypto.decrypt("", k))"#,
    );
    let expected = "nil decrypt: ciphertext does not decrypt with this key and IV";
    assert_eq!(log, [expected; 3].join("\n"));
}

#[test]
fn crypto_refuses_a_bad_key_iv_or_algorithm_naming_the_argument() {
    let cases = [
        (
            r#"avi.crypto.encrypt, "x", "short""#,
            "bad argument #2 to 'encrypt' (AES needs a 16, 24 or 32-byte key, got 5 bytes)",
        ),
        (
            r#"avi.crypto.decrypt, "x", "0123456789abcdef", nil, avi.CIPHER_3DES"#,
            "bad argument #2 to 'decrypt' (3DES needs a 24-byte key, got 16 bytes)",
        ),
        (
            r#"avi.crypto.encrypt, "x", "0123456789abcdef", "0123""#,
            "bad argument #3 to 'encrypt' (IV of at least 16 bytes expected, got 4)",
        ),
        (
            r#"avi.crypto.encrypt, "x", "0123456789abcdef", nil, "DES""#,
            "bad argument #4 to 'encrypt' (avi.CIPHER_AES or avi.CIPHER_3DES expected)",
        ),
        (
            r#"avi.crypto.encrypt, nil, "0123456789abcdef""#,
            "bad argument #1 to 'encrypt' (string expected, got nil)",
        ),
        (
            r#"avi.crypto.encrypt, "x", 12"#,
            "bad argument #2 to 'encrypt' (string expected, got number)",
        ),
    ];
    for (call, message) in cases {
        assert_eq!(pcall_log(call), format!("false {message}"), "{call}");
    }
}

// ---- string extensions -----------------------------------------------------------------------

#[test]
fn string_extensions_match_plain_text_case_sensitively() {
    let log = log_of(
        r#"local s = "/api/v1.2/items"
           avi.vs.log(string.beginswith(s, "/api"), string.beginswith(s, "/API"),
              string.beginswith(s, ""), string.beginswith("ab", "abc"))
           avi.vs.log(string.endswith(s, "items"), string.endswith(s, "Items"),
              string.endswith(s, ""), string.endswith("s", "items"))
           avi.vs.log(string.contains(s, "v1.2"), string.contains(s, "v1%.2"),
              string.contains(s, "v1.3"), string.contains(s, ".-"), string.contains("a.c", "."))
           avi.vs.log(string.beginswith("a.c", "."), string.endswith("a%d", "%d"),
              string.contains(s, "[a"))"#,
    );
    assert_eq!(
        log,
        "true false true false\ntrue false true false\ntrue false false false true\nfalse true false"
    );
}

#[test]
fn string_extensions_take_numbers_nil_and_the_method_form() {
    let log = log_of(
        r#"avi.vs.log(string.endswith(40000, "0"), string.beginswith(443, 44),
              string.contains(nil, "x"), string.endswith(nil, ""))
           local s = "example.com"
           avi.vs.log(s:beginswith("exa"), s:endswith(".com"), s:contains("ple."))
           avi.vs.log(pcall(string.contains, "abc", nil))
           avi.vs.log(pcall(string.beginswith, {}, "a"))"#,
    );
    let mut lines = log.lines();
    assert_eq!(lines.next(), Some("true true false false"));
    assert_eq!(lines.next(), Some("true true true"));
    let err = lines.next().unwrap_or_default();
    assert!(
        err.starts_with("false ")
            && err.ends_with("bad argument #2 to 'contains' (string expected, got nil)"),
        "{err}"
    );
    let err = lines.next().unwrap_or_default();
    assert!(
        err.ends_with("bad argument #1 to 'beginswith' (string expected, got table)"),
        "{err}"
    );
}

#[test]
fn string_contains_searches_in_linear_time() {
    // A naive search of this needle would compare about 5 * 10^11 bytes inside C, where the
    // instruction budget cannot stop it.
    let log = log_of(
        r#"local s = string.rep("a", 1000000)
           local t = string.rep("a", 500000) .. "b"
           avi.vs.log(string.contains(s, t), string.contains(s .. "b", t), string.endswith(s, t))"#,
    );
    assert_eq!(log, "false true false");
}

#[test]
fn string_extensions_work_in_response_scripts_and_stay_read_only() {
    let f = fx(
        "",
        r#"avi.vs.log(string.beginswith(avi.http.get_header("server"), "nginx"),
              (pcall(function() string.contains = nil end)), type(string.contains))"#,
    );
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let mut r = resp(200, &[("server", "nginx/1.27")]);
    let _ = t.on_response(&mut r, sa(S1));
    assert_eq!(t.log_output().as_deref(), Some("true false function"));
}

// ---- constants -------------------------------------------------------------------------------

#[test]
fn method_constants_are_the_strings_method_returns() {
    let log = log_of(
        r#"avi.vs.log(type(avi.HTTP_GET), avi.HTTP_GET, avi.http.method() == avi.HTTP_GET)
           local names = {"GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "MKCOL", "COPY",
              "MOVE", "PROPFIND", "PROPPATCH", "PATCH", "LOCK", "UNLOCK", "TRACE"}
           local ok = 0
           for _, m in ipairs(names) do if avi["HTTP_" .. m] == m then ok = ok + 1 end end
           avi.vs.log(ok)"#,
    );
    assert_eq!(log, "string GET true\n15");
}

#[test]
fn status_constants_are_numbers() {
    let log = log_of(
        r#"local st = {HTTP_OK = 200, HTTP_CREATED = 201, HTTP_MOVED_PERMANENTLY = 301,
              HTTP_MOVED_TEMPORARILY = 302, HTTP_NOT_MODIFIED = 304, HTTP_TEMPORARY_REDIRECT = 307,
              HTTP_BAD_REQUEST = 400, HTTP_UNAUTHORIZED = 401, HTTP_FORBIDDEN = 403,
              HTTP_NOT_FOUND = 404, HTTP_NOT_ALLOWED = 405, HTTP_INTERNAL_SERVER_ERROR = 500,
              HTTP_METHOD_NOT_IMPLEMENTED = 501, HTTP_SERVICE_UNAVAILABLE = 503,
              HTTP_GATEWAY_TIMEOUT = 504}
           local ok = 0
           for name, code in pairs(st) do
             if type(avi[name]) == "number" and avi[name] == code then ok = ok + 1 end
           end
           avi.vs.log(ok)"#,
    );
    assert_eq!(log, "15");
}

#[test]
fn status_constants_work_with_response_and_redirect() {
    let f = fx(
        r#"if avi.http.get_path() == "/old" then
             avi.http.redirect("/new", avi.HTTP_MOVED_PERMANENTLY)
           end
           avi.http.response(avi.HTTP_FORBIDDEN)"#,
        "",
    );
    let (_, v, _) = run_req(&f, "/old", &[]);
    assert_eq!(responded(v).status(), StatusCode::MOVED_PERMANENTLY);
    let (_, v, _) = run_req(&f, "/", &[]);
    assert_eq!(responded(v).status(), StatusCode::FORBIDDEN);
}

#[test]
fn cipher_and_rate_limit_constants_are_distinct_numbers() {
    let log = log_of(
        r#"avi.vs.log(avi.CIPHER_AES, avi.CIPHER_3DES)
           avi.vs.log(avi.RL_CUSTOM_STRING, avi.RL_ACTION_NONE, avi.RL_ACTION_CLOSE_CONN,
              avi.RL_ACTION_LOCAL_RSP, avi.RL_ACTION_REDIRECT)
           avi.vs.log(avi.HTTP_REQUEST, avi.HTTP_RESPONSE)"#,
    );
    assert_eq!(log, "1 2\n1 0 1 2 3\n1 2");
}

// ---- the shipped example ---------------------------------------------------------------------

/// The LB cookie examples/encrypted_cookie.toml's response script gives a client that `server`
/// answered.
fn sealed_cookie(f: &Fx, server: &str) -> String {
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[])));
    let mut r = resp(200, &[]);
    let _ = t.on_response(&mut r, sa(server));
    let set_cookie = r
        .headers
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let value = set_cookie
        .strip_prefix("LB=")
        .and_then(|v| v.split(';').next())
        .unwrap_or_else(|| panic!("no LB cookie in {set_cookie:?}"));
    format!("LB={value}")
}

#[test]
fn encrypted_cookie_example_brings_a_client_back_to_its_server() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/encrypted_cookie.toml");
    let config = crate::config::load(&path).expect("the example loads");
    let f = fixture_with(config.virtual_services[0].datascripts.clone(), limits());

    let cookie = sealed_cookie(&f, S2);
    let (_, v, _) = run_req(&f, "/", &[("cookie", &cookie)]);
    assert_eq!(forward(v).server, Some(sa(S2)));
    // A client that already has the cookie gets no new one.
    let mut t = f.hooks.begin(info());
    forward(t.on_request(&mut req("/", &[("cookie", &cookie)])));
    let mut r = resp(200, &[]);
    let _ = t.on_response(&mut r, sa(S2));
    assert!(r.headers.get("set-cookie").is_none());
    // A down server (S3) is not selected; a forged cookie is ignored.
    let down = sealed_cookie(&f, S3);
    let (_, v, _) = run_req(&f, "/", &[("cookie", &down)]);
    assert_eq!(forward(v).server, None);
    let forged = cookie.replacen("LB=", "LB=A", 1);
    let (_, v, _) = run_req(&f, "/", &[("cookie", &forged)]);
    assert_eq!(forward(v).server, None);
    let (_, v, _) = run_req(&f, "/", &[("cookie", "LB=bm90IGEgY2lwaGVydGV4dA%3D%3D")]);
    assert_eq!(forward(v).server, None);
}

#[test]
fn misspelt_utils_and_crypto_names_are_refused_with_the_nearest_one() {
    let errs = ScriptSet::compile(
        "shop",
        vec![src(
            Event::HttpReq,
            "local h = avi.utils.md5hash('x')\nlocal c = avi.crypto.encrpyt('x', 'k')\n\
             local r = avi.utils.get_ip_reputation('192.0.2.1')",
        )],
    )
    .expect_err("unknown names");
    let shown: Vec<String> = errs.iter().map(ToString::to_string).collect();
    assert_eq!(shown.len(), 3, "{shown:?}");
    assert!(
        shown[2].contains("avi.utils.get_ip_reputation does not exist"),
        "{shown:?}"
    );
    assert!(
        shown[0].contains("avi.utils.md5hash does not exist; did you mean avi.utils.md5_hash?"),
        "{shown:?}"
    );
    assert!(
        shown[1].contains("avi.crypto.encrpyt does not exist; did you mean avi.crypto.encrypt?"),
        "{shown:?}"
    );
    // Every new name is known, constants included.
    ScriptSet::compile(
        "shop",
        vec![src(
            Event::HttpResp,
            "local x = {avi.utils.get_geo_from_ip, avi.utils.ip.netaddr, avi.crypto.decrypt, \
             avi.CIPHER_3DES, avi.HTTP_PROPFIND, avi.HTTP_GATEWAY_TIMEOUT, avi.RL_ACTION_NONE}",
        )],
    )
    .expect("known names");
}
