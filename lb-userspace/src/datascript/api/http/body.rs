//! The buffered bodies: avi.http.get_req_body (HTTP_REQ_DATA), get_response_body
//! (HTTP_RESP_DATA) and set_response_body_buffer_size (HTTP_RESP). Sizes and offsets are in
//! KB, as Avi documents them.

use std::sync::Arc;

use mlua::{Lua, Table, Value};

use super::super::args::{lua_str, number};
use super::super::{LResult, reg, rt, txn};
use super::with_ctx;
use crate::datascript::Event;
use crate::datascript::vm::{Ctx, VmShared};

/// set_response_body_buffer_size's range (KB), as Avi documents it.
const BUFFER_KB: std::ops::RangeInclusive<f64> = 1.0..=32768.0;

/// A KB count argument: absent or nil is `None`; anything but a non-negative number is an error.
fn kb_arg(v: Option<&Value>, func: &str, pos: usize) -> LResult<Option<usize>> {
    match v {
        None | Some(Value::Nil) => Ok(None),
        Some(v) => match number(v) {
            Some(n) if n >= 0.0 && n.is_finite() => Ok(Some((n as usize).saturating_mul(1024))),
            _ => Err(rt(format!(
                "bad argument #{pos} to '{func}' (size in KB expected)"
            ))),
        },
    }
}

/// The body buffered for `event`, or a Lua error naming `func` in any other event.
fn body_of<'a>(ctx: &'a Ctx, event: Event, func: &str) -> LResult<&'a [u8]> {
    match (ctx.event, ctx.body.as_ref()) {
        (Some(e), Some(body)) if e == event => Ok(body),
        _ => Err(rt(format!("{func}: only allowed in {event}"))),
    }
}

pub(super) fn install(lua: &Lua, http: &Table, sh: &Arc<VmShared>) -> LResult<()> {
    // get_req_body([size_kb]): the whole body, or its first size_kb KB.
    reg!(lua, http, sh, "get_req_body", |l, s, a| {
        let limit = kb_arg(a.first(), "get_req_body", 1)?;
        with_ctx(s, |ctx| {
            let body = body_of(ctx, Event::HttpReqData, "get_req_body")?;
            let end = limit.map_or(body.len(), |n| n.min(body.len()));
            lua_str(l, &body[..end])
        })
    });
    // get_response_body(size_kb[, offset_kb]): size_kb KB from offset_kb KB on ("" past the
    // end); without a size, the rest of the body.
    reg!(lua, http, sh, "get_response_body", |l, s, a| {
        let size = kb_arg(a.first(), "get_response_body", 1)?;
        let offset = kb_arg(a.get(1), "get_response_body", 2)?.unwrap_or(0);
        with_ctx(s, |ctx| {
            let body = body_of(ctx, Event::HttpRespData, "get_response_body")?;
            let start = offset.min(body.len());
            let end = size.map_or(body.len(), |n| start.saturating_add(n).min(body.len()));
            lua_str(l, &body[start..end])
        })
    });
    // set_response_body_buffer_size(kb): how much of the response HTTP_RESP_DATA gets; the
    // configured max_body_buffer stays the ceiling.
    reg!(lua, http, sh, "set_response_body_buffer_size", |l, s, a| {
        let func = "set_response_body_buffer_size";
        let kb = a
            .first()
            .and_then(number)
            .filter(|n| BUFFER_KB.contains(n))
            .ok_or_else(|| {
                rt(format!(
                    "bad argument #1 to '{func}' (1 to 32768 KB expected)"
                ))
            })?;
        with_ctx(s, |ctx| {
            if ctx.event != Some(Event::HttpResp) {
                return Err(rt(format!("{func}: only allowed in HTTP_RESP")));
            }
            txn(ctx)?.resp_body_buffer = Some(kb as usize * 1024);
            Ok(())
        })
    });
    Ok(())
}
