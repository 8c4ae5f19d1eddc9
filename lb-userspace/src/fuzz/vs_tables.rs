//! Argument roles of `avi.vs.table_*` (`datascript/api/vs_tables.lua` and the primitives in
//! `vs.rs`): sequences of calls with any count and mix of Lua types, compared call by call
//! with a model of the contract written from the module doc of `datascript/api/vs.rs`
//! (which argument is the table, key, value and lifetime; what is an error; what each call
//! returns; the lifetime it leaves), and the tables compared with the model's at the end.

use std::collections::BTreeMap;

use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

use latch_tests::fuzz;

use super::{Service, info, lua_literal};
use crate::datascript::Event;
use crate::proxy::hooks::{HookFactory, RequestVerdict};
use crate::tables::{DEFAULT_TABLE, TableLimits};

const DEFAULT_LIFETIME_S: u64 = 300;

/// A Lua argument: its literal, and what the model needs to know of it.
#[derive(Clone, Copy, Debug)]
enum Arg {
    Str(&'static str),
    /// A string of `n` times `c` (over the key or value limits).
    Long(char, usize),
    /// Literal, Lua's string form, value.
    Num(&'static str, &'static str, f64),
    Nil,
    Bool(bool),
    Table,
    Function,
}

const STRINGS: &[&str] = &["k", "v", "t", "30", "", "a b", "ключ", "k2", "1.5"];
const NUMBERS: &[(&str, &str, f64)] = &[
    ("1", "1", 1.0),
    ("30", "30", 30.0),
    ("0", "0", 0.0),
    ("-5", "-5", -5.0),
    ("0.5", "0.5", 0.5),
    ("1.5", "1.5", 1.5),
    ("100000", "100000", 100_000.0),
    ("4294967296", "4294967296", 4_294_967_296.0),
    ("1e15", "1e+15", 1e15),
    ("math.huge", "inf", f64::INFINITY),
    ("-math.huge", "-inf", f64::NEG_INFINITY),
];

fn arg() -> impl Strategy<Value = Arg> {
    prop_oneof![
        5 => proptest::sample::select(STRINGS).prop_map(Arg::Str),
        4 => proptest::sample::select(NUMBERS).prop_map(|(l, s, v)| Arg::Num(l, s, v)),
        1 => prop_oneof![Just(Arg::Long('x', 300)), Just(Arg::Long('y', 2000))],
        1 => Just(Arg::Nil),
        1 => any::<bool>().prop_map(Arg::Bool),
        1 => Just(Arg::Table),
        1 => Just(Arg::Function),
    ]
}

impl Arg {
    fn lua(&self) -> String {
        match self {
            Self::Str(s) => lua_literal(s.as_bytes()),
            Self::Long(c, n) => {
                format!("string.rep({}, {n})", lua_literal(c.to_string().as_bytes()))
            }
            Self::Num(l, _, _) => l.to_string(),
            Self::Nil => "nil".into(),
            Self::Bool(b) => b.to_string(),
            Self::Table => "{}".into(),
            Self::Function => "function() end".into(),
        }
    }

    /// The stored string form of a key or value argument; `None` when it is neither a string
    /// nor a number.
    fn text(&self) -> Option<String> {
        match self {
            Self::Str(s) => Some(s.to_string()),
            Self::Long(c, n) => Some(c.to_string().repeat(*n)),
            Self::Num(_, s, _) => Some(s.to_string()),
            _ => None,
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Self::Num(_, _, v) => Some(*v),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Func {
    Insert,
    Lookup,
    Refresh,
    Remove,
}

impl Func {
    fn name(self) -> &'static str {
        match self {
            Self::Insert => "table_insert",
            Self::Lookup => "table_lookup",
            Self::Refresh => "table_refresh",
            Self::Remove => "table_remove",
        }
    }
}

#[derive(Clone, Debug)]
struct Call {
    func: Func,
    args: Vec<Arg>,
}

fn call() -> impl Strategy<Value = Call> {
    (
        prop_oneof![
            3 => Just(Func::Insert),
            2 => Just(Func::Lookup),
            1 => Just(Func::Refresh),
            1 => Just(Func::Remove),
        ],
        proptest::collection::vec(arg(), 0..6),
    )
        .prop_map(|(func, args)| Call { func, args })
}

/// What a call returns, as the script logs it.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    Error,
    /// `type(a) tostring(a) type(b) tostring(b)` of the first two results.
    Values(String),
}

fn values(a: Option<&str>, b: Option<&str>) -> Outcome {
    let one = |v: Option<&str>| match v {
        None => "nil\tnil".to_string(),
        Some(v) => v.to_string(),
    };
    Outcome::Values(format!("{}\t{}", one(a), one(b)))
}

/// The contract, for tables that never expire during a case (the clock stands still).
#[derive(Default, Debug)]
struct Model {
    /// (table, key) -> (value, expiry in whole seconds from now).
    entries: BTreeMap<(String, String), (String, u64)>,
}

/// A lifetime argument: a finite number of at least `min` seconds, cut to whole seconds.
fn lifetime(a: &Arg, min: f64) -> Option<u64> {
    let v = a.number()?;
    (v.is_finite() && v >= min).then(|| v.floor() as u64)
}

impl Model {
    /// The table, key, value and lifetime of a table_insert, if the arguments are valid.
    fn insert_roles(args: &[Arg]) -> Option<(String, String, String, Option<u64>)> {
        let kv = |a: &Arg| a.text();
        match args {
            [k, v] => Some((
                DEFAULT_TABLE.into(),
                kv(k)?,
                kv(v)?,
                Some(DEFAULT_LIFETIME_S),
            )),
            [k, v, l] if l.number().is_some() => {
                Some((DEFAULT_TABLE.into(), kv(k)?, kv(v)?, lifetime(l, 1.0)))
            }
            [t, k, v] => Some((kv(t)?, kv(k)?, kv(v)?, Some(DEFAULT_LIFETIME_S))),
            [t, k, v, l] => {
                let roles = (kv(t)?, kv(k)?, kv(v)?);
                l.number()?;
                Some((roles.0, roles.1, roles.2, lifetime(l, 1.0)))
            }
            _ => None,
        }
    }

    /// Table, key and extension of table_lookup / table_refresh.
    fn touch_roles(args: &[Arg]) -> Option<(String, String, Option<u64>)> {
        match args {
            [k] => Some((DEFAULT_TABLE.into(), k.text()?, Some(DEFAULT_LIFETIME_S))),
            [k, e] if e.number().is_some() => {
                Some((DEFAULT_TABLE.into(), k.text()?, lifetime(e, 0.0)))
            }
            [t, k] => Some((t.text()?, k.text()?, Some(DEFAULT_LIFETIME_S))),
            [t, k, e] => {
                let roles = (t.text()?, k.text()?);
                e.number()?;
                Some((roles.0, roles.1, lifetime(e, 0.0)))
            }
            _ => None,
        }
    }

    fn apply(&mut self, call: &Call) -> Outcome {
        let limits = TableLimits::default();
        let max = limits.max_lifetime_s;
        match call.func {
            Func::Insert => {
                let Some((t, k, v, Some(life))) = Self::insert_roles(&call.args) else {
                    return Outcome::Error;
                };
                if k.len() > limits.max_key_bytes || t.len() > limits.max_key_bytes {
                    return values(Some("boolean\tfalse"), None);
                }
                let expiry = life.min(max);
                match self.entries.get_mut(&(t.clone(), k.clone())) {
                    // A live key keeps its value; only its lifetime restarts.
                    Some(e) => e.1 = expiry,
                    None if v.len() > limits.max_value_bytes => {
                        return values(Some("boolean\tfalse"), None);
                    }
                    None => {
                        self.entries.insert((t, k), (v, expiry));
                    }
                }
                values(Some("boolean\ttrue"), None)
            }
            Func::Lookup | Func::Refresh => {
                let Some((t, k, Some(exten))) = Self::touch_roles(&call.args) else {
                    return Outcome::Error;
                };
                let found = self.entries.get_mut(&(t, k)).map(|e| {
                    e.1 = e.1.saturating_add(exten).min(max).max(e.1);
                    e.clone()
                });
                match (call.func, found) {
                    (Func::Lookup, Some((v, left))) => values(
                        Some(&format!("string\t{v}")),
                        Some(&format!("number\t{left}")),
                    ),
                    (Func::Lookup, None) => values(None, None),
                    (_, found) => values(Some(&format!("boolean\t{}", found.is_some())), None),
                }
            }
            Func::Remove => {
                let roles = match call.args.as_slice() {
                    [k] => k.text().map(|k| (DEFAULT_TABLE.to_string(), k)),
                    [t, k] => t.text().zip(k.text()),
                    _ => None,
                };
                let Some(key) = roles else {
                    return Outcome::Error;
                };
                let removed = self.entries.remove(&key).is_some();
                values(Some(&format!("boolean\t{removed}")), None)
            }
        }
    }
}

/// One HTTP_REQ script making the calls, each under pcall, logging each result.
fn script(calls: &[Call]) -> String {
    let mut s = String::from(
        "local function show(i, ok, a, b)\n\
         if not ok then avi.vs.log('R' .. i .. '\\terror') return end\n\
         avi.vs.log(string.format('R%d\\t%s\\t%s\\t%s\\t%s', i, type(a), tostring(a), type(b), tostring(b)))\n\
         end\n",
    );
    for (i, c) in calls.iter().enumerate() {
        let args: Vec<String> = c.args.iter().map(Arg::lua).collect();
        let sep = if args.is_empty() { "" } else { ", " };
        s.push_str(&format!(
            "show({i}, pcall(avi.vs.{}{sep}{}))\n",
            c.func.name(),
            args.join(", ")
        ));
    }
    s
}

fn check(calls: &[Call]) -> Result<(), TestCaseError> {
    let svc = Service::new(&[(Event::HttpReq, script(calls))])
        .map_err(|e| TestCaseError::fail(format!("script: {e}")))?;
    let mut txn = svc.hooks.begin(info());
    let mut req = http::Request::builder()
        .uri("/")
        .body(())
        .map_err(|e| TestCaseError::fail(e.to_string()))?
        .into_parts()
        .0;
    let verdict = txn.on_request(&mut req);
    prop_assert!(
        matches!(verdict, RequestVerdict::Forward(_)),
        "the script failed outside pcall"
    );
    let log = txn.log_output().unwrap_or_default();
    let got: Vec<(usize, Outcome)> = log
        .lines()
        .filter_map(|l| {
            let (i, rest) = l.strip_prefix('R')?.split_once('\t')?;
            let outcome = if rest == "error" {
                Outcome::Error
            } else {
                Outcome::Values(rest.to_string())
            };
            Some((i.parse().ok()?, outcome))
        })
        .collect();
    prop_assert_eq!(got.len(), calls.len(), "one result per call: {}", log);
    let mut model = Model::default();
    for (i, c) in calls.iter().enumerate() {
        let want = model.apply(c);
        prop_assert_eq!(&got[i], &(i, want), "call {} {:?}", i, c);
    }
    // The tables hold what the model holds, with the same lifetimes.
    prop_assert_eq!(svc.tables.len(), model.entries.len());
    for ((t, k), (v, left)) in &model.entries {
        let e = svc.tables.get(t, k, svc.now_ns);
        prop_assert!(e.is_some(), "missing {:?} {:?}", t, k);
        if let Some(e) = e {
            prop_assert_eq!(&e.value, v);
            prop_assert_eq!(e.expires_at_mono_ns, svc.now_ns + left * 1_000_000_000);
        }
    }
    Ok(())
}

#[test]
fn argument_roles_match_the_contract() {
    fuzz::run(
        "vs_tables",
        proptest::collection::vec(call(), 1..12),
        |calls| check(&calls),
    );
}
