//! Evaluation: total, with the first error kept.

use crate::parse::{BinOp, Expr, Func, LikeTok};
use evmesh_core::event::AttrRef;
use evmesh_core::Event;
use std::borrow::Cow;
use std::fmt;

/// The TCK's error kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    Parse,
    Math,
    Cast,
    MissingFunction,
    FunctionEvaluation,
    MissingAttribute,
    Generic,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ErrorKind::Parse => "parse",
            ErrorKind::Math => "math",
            ErrorKind::Cast => "cast",
            ErrorKind::MissingFunction => "missingFunction",
            ErrorKind::FunctionEvaluation => "functionEvaluation",
            ErrorKind::MissingAttribute => "missingAttribute",
            ErrorKind::Generic => "generic",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value<'a> {
    Bool(bool),
    Int(i32),
    Str(Cow<'a, str>),
}

impl fmt::Display for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{}", if *b { "TRUE" } else { "FALSE" }),
            Value::Int(i) => write!(f, "{i}"),
            Value::Str(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Bool,
    Int,
    Str,
}

impl Value<'_> {
    fn ty(&self) -> Ty {
        match self {
            Value::Bool(_) => Ty::Bool,
            Value::Int(_) => Ty::Int,
            Value::Str(_) => Ty::Str,
        }
    }
}

fn zero<'a>(t: Ty) -> Value<'a> {
    match t {
        Ty::Bool => Value::Bool(false),
        Ty::Int => Value::Int(0),
        Ty::Str => Value::Str(Cow::Borrowed("")),
    }
}

pub struct Out<'a> {
    pub value: Value<'a>,
    pub error: Option<ErrorKind>,
}

fn ok(value: Value<'_>) -> Out<'_> {
    Out { value, error: None }
}

fn with(value: Value<'_>, error: Option<ErrorKind>) -> Out<'_> {
    Out { value, error }
}

/// Implicit cast; a failure gives the target's zero value and a cast error.
fn cast<'a>(v: Value<'a>, to: Ty, err: &mut Option<ErrorKind>) -> Value<'a> {
    let mut fail = || {
        err.get_or_insert(ErrorKind::Cast);
        zero(to)
    };
    match (v, to) {
        (v @ Value::Bool(_), Ty::Bool)
        | (v @ Value::Int(_), Ty::Int)
        | (v @ Value::Str(_), Ty::Str) => v,
        (Value::Bool(b), Ty::Int) => Value::Int(i32::from(b)),
        (Value::Bool(b), Ty::Str) => Value::Str(Cow::Borrowed(if b { "true" } else { "false" })),
        (Value::Int(i), Ty::Str) => Value::Str(Cow::Owned(i.to_string())),
        (Value::Int(_), Ty::Bool) => fail(),
        (Value::Str(s), Ty::Int) => match s.parse::<i32>() {
            Ok(i) => Value::Int(i),
            Err(_) => fail(),
        },
        (Value::Str(s), Ty::Bool) => {
            if s.eq_ignore_ascii_case("true") {
                Value::Bool(true)
            } else if s.eq_ignore_ascii_case("false") {
                Value::Bool(false)
            } else {
                fail()
            }
        }
    }
}

fn as_bool(v: &Value<'_>) -> bool {
    matches!(v, Value::Bool(true))
}

fn as_int(v: &Value<'_>) -> i32 {
    match v {
        Value::Int(i) => *i,
        _ => 0,
    }
}

fn as_str<'b>(v: &'b Value<'_>) -> &'b str {
    match v {
        Value::Str(s) => s,
        _ => "",
    }
}

pub fn like(s: &str, p: &[LikeTok]) -> bool {
    let (mut si, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    loop {
        if pi < p.len() {
            match p[pi] {
                LikeTok::Many => {
                    star = Some((pi + 1, si));
                    pi += 1;
                    continue;
                }
                LikeTok::One => {
                    if let Some(c) = s[si..].chars().next() {
                        si += c.len_utf8();
                        pi += 1;
                        continue;
                    }
                }
                LikeTok::Lit(c) => {
                    if s[si..].starts_with(c) {
                        si += c.len_utf8();
                        pi += 1;
                        continue;
                    }
                }
            }
        } else if si == s.len() {
            return true;
        }
        match star {
            Some((sp, ss)) => match s[ss..].chars().next() {
                Some(c) => {
                    let ns = ss + c.len_utf8();
                    star = Some((sp, ns));
                    si = ns;
                    pi = sp;
                }
                None => return false,
            },
            None => return false,
        }
    }
}

fn attr<'a>(e: &'a Event, name: &str) -> Option<Value<'a>> {
    Some(match e.attribute(name)? {
        AttrRef::Str(s) => Value::Str(Cow::Borrowed(s)),
        AttrRef::Bool(b) => Value::Bool(b),
        AttrRef::Integer(i) => match i32::try_from(i) {
            Ok(i) => Value::Int(i),
            Err(_) => Value::Str(Cow::Owned(i.to_string())),
        },
    })
}

impl Expr {
    pub fn eval<'a>(&'a self, e: &'a Event) -> Out<'a> {
        match self {
            Expr::Bool(b) => ok(Value::Bool(*b)),
            Expr::Int(i) => ok(Value::Int(*i)),
            Expr::Str(s) => ok(Value::Str(Cow::Borrowed(s))),
            Expr::Attr(name) => match attr(e, name) {
                Some(v) => ok(v),
                None => with(Value::Bool(false), Some(ErrorKind::MissingAttribute)),
            },
            Expr::Exists(name) => ok(Value::Bool(e.attribute(name).is_some())),
            Expr::Not(x) => {
                let o = x.eval(e);
                if o.error.is_some() {
                    return with(Value::Bool(false), o.error);
                }
                let mut err = None;
                let b = as_bool(&cast(o.value, Ty::Bool, &mut err));
                with(Value::Bool(!b), err)
            }
            Expr::Neg(x) => {
                let o = x.eval(e);
                if o.error.is_some() {
                    return with(Value::Int(0), o.error);
                }
                let mut err = None;
                let i = as_int(&cast(o.value, Ty::Int, &mut err));
                match i.checked_neg() {
                    Some(n) => with(Value::Int(n), err),
                    None => with(Value::Int(0), err.or(Some(ErrorKind::Math))),
                }
            }
            Expr::Like {
                expr,
                pattern,
                negated,
            } => {
                let o = expr.eval(e);
                if o.error.is_some() {
                    return with(Value::Bool(false), o.error);
                }
                let mut err = None;
                let s = cast(o.value, Ty::Str, &mut err);
                with(Value::Bool(like(as_str(&s), pattern) != *negated), err)
            }
            Expr::In { expr, set, negated } => {
                let o = expr.eval(e);
                if o.error.is_some() {
                    return with(Value::Bool(false), o.error);
                }
                let target = o.value.ty();
                let mut err = None;
                let mut found = false;
                for item in set {
                    let io = item.eval(e);
                    if io.error.is_some() {
                        return with(Value::Bool(false), io.error);
                    }
                    let v = cast(io.value, target, &mut err);
                    if v == o.value {
                        found = true;
                        break;
                    }
                }
                with(Value::Bool(found != *negated), err)
            }
            Expr::Bin { op, l, r } => self.binary(*op, l, r, e),
            Expr::Call { func, args } => call(*func, args, e),
        }
    }

    fn binary<'a>(&'a self, op: BinOp, l: &'a Expr, r: &'a Expr, e: &'a Event) -> Out<'a> {
        let ret = match op {
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Mod => Ty::Int,
            _ => Ty::Bool,
        };
        let lo = l.eval(e);
        if lo.error.is_some() {
            return with(zero(ret), lo.error);
        }
        let mut err = None;
        match op {
            BinOp::And | BinOp::Or => {
                let lb = as_bool(&cast(lo.value, Ty::Bool, &mut err));
                if (op == BinOp::And && !lb) || (op == BinOp::Or && lb) {
                    return with(Value::Bool(lb), err);
                }
                let ro = r.eval(e);
                if ro.error.is_some() {
                    return with(Value::Bool(false), err.or(ro.error));
                }
                let rb = as_bool(&cast(ro.value, Ty::Bool, &mut err));
                return with(Value::Bool(rb), err);
            }
            _ => {}
        }
        let ro = r.eval(e);
        if ro.error.is_some() {
            return with(zero(ret), ro.error);
        }
        let (lv, rv) = (lo.value, ro.value);
        let v = match op {
            BinOp::Xor => {
                let a = as_bool(&cast(lv, Ty::Bool, &mut err));
                let b = as_bool(&cast(rv, Ty::Bool, &mut err));
                Value::Bool(a != b)
            }
            BinOp::Eq | BinOp::Ne => {
                // Ambiguous operator: the right operand's type decides (spec 3.7).
                let target = rv.ty();
                let lv = cast(lv, target, &mut err);
                Value::Bool((lv == rv) == (op == BinOp::Eq))
            }
            BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let a = as_int(&cast(lv, Ty::Int, &mut err));
                let b = as_int(&cast(rv, Ty::Int, &mut err));
                Value::Bool(match op {
                    BinOp::Lt => a < b,
                    BinOp::Le => a <= b,
                    BinOp::Gt => a > b,
                    _ => a >= b,
                })
            }
            _ => {
                let a = as_int(&cast(lv, Ty::Int, &mut err));
                let b = as_int(&cast(rv, Ty::Int, &mut err));
                let r = match op {
                    BinOp::Add => a.checked_add(b),
                    BinOp::Sub => a.checked_sub(b),
                    BinOp::Mul => a.checked_mul(b),
                    BinOp::Div => a.checked_div(b),
                    _ => a.checked_rem(b),
                };
                match r {
                    Some(i) => Value::Int(i),
                    None => {
                        err.get_or_insert(ErrorKind::Math);
                        Value::Int(0)
                    }
                }
            }
        };
        with(v, err)
    }
}

fn call<'a>(func: Func, args: &'a [Expr], e: &'a Event) -> Out<'a> {
    let ret = match func {
        Func::Abs | Func::Length | Func::Int => Ty::Int,
        Func::Bool | Func::IsInt | Func::IsBool | Func::IsString => Ty::Bool,
        _ => Ty::Str,
    };
    // Up to three arguments stay on the stack: calls allocate nothing in the common case.
    let mut inline: [Option<Value<'a>>; 3] = [None, None, None];
    let mut spill: Vec<Value<'a>> = Vec::new();
    for (i, a) in args.iter().enumerate() {
        let o = a.eval(e);
        if o.error.is_some() {
            return with(zero(ret), o.error);
        }
        match inline.get_mut(i) {
            Some(slot) => *slot = Some(o.value),
            None => spill.push(o.value),
        }
    }
    let mut err = None;
    let mut it = inline.into_iter().flatten().chain(spill);
    let mut arg =
        |t: Ty, err: &mut Option<ErrorKind>| it.next().map(|v| cast(v, t, err)).unwrap_or(zero(t));
    let fe = ErrorKind::FunctionEvaluation;
    let v = match func {
        Func::Abs => {
            let i = as_int(&arg(Ty::Int, &mut err));
            match i.checked_abs() {
                Some(a) => Value::Int(a),
                None => {
                    err.get_or_insert(ErrorKind::Math);
                    Value::Int(i32::MAX)
                }
            }
        }
        Func::Length => Value::Int(
            i32::try_from(as_str(&arg(Ty::Str, &mut err)).chars().count()).unwrap_or(i32::MAX),
        ),
        Func::Concat => {
            let mut s = String::new();
            for _ in 0..args.len() {
                s.push_str(as_str(&arg(Ty::Str, &mut err)));
            }
            Value::Str(Cow::Owned(s))
        }
        Func::ConcatWs => {
            let sep = arg(Ty::Str, &mut err);
            let mut s = String::new();
            for i in 1..args.len() {
                if i > 1 {
                    s.push_str(as_str(&sep));
                }
                s.push_str(as_str(&arg(Ty::Str, &mut err)));
            }
            Value::Str(Cow::Owned(s))
        }
        Func::Lower => Value::Str(Cow::Owned(as_str(&arg(Ty::Str, &mut err)).to_lowercase())),
        Func::Upper => Value::Str(Cow::Owned(as_str(&arg(Ty::Str, &mut err)).to_uppercase())),
        Func::Trim => Value::Str(Cow::Owned(
            as_str(&arg(Ty::Str, &mut err)).trim().to_owned(),
        )),
        Func::Left | Func::Right => {
            let s = arg(Ty::Str, &mut err);
            let n = as_int(&arg(Ty::Int, &mut err));
            let s = as_str(&s);
            let len = s.chars().count();
            if n < 0 {
                err.get_or_insert(fe);
                Value::Str(Cow::Owned(s.to_owned()))
            } else if (n as usize) >= len {
                Value::Str(Cow::Owned(s.to_owned()))
            } else if func == Func::Left {
                Value::Str(Cow::Owned(s.chars().take(n as usize).collect()))
            } else {
                Value::Str(Cow::Owned(s.chars().skip(len - n as usize).collect()))
            }
        }
        Func::Substring => {
            let s = arg(Ty::Str, &mut err);
            let pos = as_int(&arg(Ty::Int, &mut err)) as i64;
            let n = if args.len() == 3 {
                Some(as_int(&arg(Ty::Int, &mut err)) as i64)
            } else {
                None
            };
            let s = as_str(&s);
            let len = s.chars().count() as i64;
            if pos == 0 {
                Value::Str(Cow::Borrowed(""))
            } else if pos > len || pos < -len || n.is_some_and(|n| n < 0) {
                err.get_or_insert(fe);
                Value::Str(Cow::Borrowed(""))
            } else {
                let start = if pos > 0 { pos - 1 } else { len + pos };
                let take = n.unwrap_or(len).min(len - start);
                Value::Str(Cow::Owned(
                    s.chars().skip(start as usize).take(take as usize).collect(),
                ))
            }
        }
        Func::Int => arg(Ty::Int, &mut err),
        Func::Bool => match it_bool(args, e) {
            Some(v) => v,
            None => arg(Ty::Bool, &mut err),
        },
        Func::String => arg(Ty::Str, &mut err),
        Func::IsInt | Func::IsBool | Func::IsString => {
            let t = match func {
                Func::IsInt => Ty::Int,
                Func::IsBool => Ty::Bool,
                _ => Ty::Str,
            };
            let mut probe = None;
            let v = it_first(args, e);
            let _ = v.map(|v| cast(v, t, &mut probe));
            Value::Bool(probe.is_none())
        }
    };
    with(v, err)
}

/// `BOOL(integer)` is an explicit cast: non-zero is true.
fn it_bool<'a>(args: &'a [Expr], e: &'a Event) -> Option<Value<'a>> {
    match it_first(args, e)? {
        Value::Int(i) => Some(Value::Bool(i != 0)),
        _ => None,
    }
}

fn it_first<'a>(args: &'a [Expr], e: &'a Event) -> Option<Value<'a>> {
    args.first().map(|a| a.eval(e).value)
}
