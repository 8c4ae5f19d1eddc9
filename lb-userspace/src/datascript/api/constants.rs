//! Constants on `avi` that belong to no one namespace: request methods, response statuses and
//! the rate-limit types and actions.
//!
//! Lua types (Avi calls them "static strings" and does not say more):
//! - methods are strings (`avi.http.method() == avi.HTTP_POST`, since method() returns "POST");
//! - statuses are numbers, which avi.http.response and redirect take and `==` compares with
//!   numbers (avi.http.status() is a string: compare `tonumber(avi.http.status())`);
//! - the RL_* values are numbers, only ever passed back to avi.* calls.
//!
//! The context constants (avi.HTTP_REQUEST, HTTP_RESPONSE) and the query ones (avi.QUERY_TABLE,
//! QUERY_STRING) are avi.http's, avi.CIPHER_* avi.crypto's.

use mlua::Table;

use super::LResult;

/// avi.HTTP_GET ...: the method names as avi.http.method() returns them.
const METHODS: &[&str] = &[
    "GET",
    "POST",
    "PUT",
    "HEAD",
    "DELETE",
    "OPTIONS",
    "MKCOL",
    "COPY",
    "MOVE",
    "PROPFIND",
    "PROPPATCH",
    "PATCH",
    "LOCK",
    "UNLOCK",
    "TRACE",
];

/// avi.HTTP_OK ...
const STATUSES: &[(&str, i64)] = &[
    ("HTTP_OK", 200),
    ("HTTP_CREATED", 201),
    ("HTTP_MOVED_PERMANENTLY", 301),
    ("HTTP_MOVED_TEMPORARILY", 302),
    ("HTTP_NOT_MODIFIED", 304),
    ("HTTP_TEMPORARY_REDIRECT", 307),
    ("HTTP_BAD_REQUEST", 400),
    ("HTTP_UNAUTHORIZED", 401),
    ("HTTP_FORBIDDEN", 403),
    ("HTTP_NOT_FOUND", 404),
    ("HTTP_NOT_ALLOWED", 405),
    ("HTTP_INTERNAL_SERVER_ERROR", 500),
    ("HTTP_METHOD_NOT_IMPLEMENTED", 501),
    ("HTTP_SERVICE_UNAVAILABLE", 503),
    ("HTTP_GATEWAY_TIMEOUT", 504),
];

/// The rate-limit key type of avi.vs.rate_limit and the actions it reports.
const RATE_LIMIT: &[(&str, i64)] = &[
    ("RL_CUSTOM_STRING", 1),
    ("RL_ACTION_NONE", 0),
    ("RL_ACTION_CLOSE_CONN", 1),
    ("RL_ACTION_LOCAL_RSP", 2),
    ("RL_ACTION_REDIRECT", 3),
];

/// Sets every constant of this module on `avi`.
pub(super) fn install(avi: &Table) -> LResult<()> {
    for method in METHODS {
        avi.raw_set(format!("HTTP_{method}"), *method)?;
    }
    for (name, value) in STATUSES.iter().chain(RATE_LIMIT) {
        avi.raw_set(*name, *value)?;
    }
    Ok(())
}
