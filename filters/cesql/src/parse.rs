//! Lexer and precedence-climbing parser.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ParseError {
    /// Character position (0-based) in the expression.
    pub position: usize,
    pub message: String,
    /// `missingFunction` rather than a syntax error.
    pub missing_function: bool,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at position {}: {}", self.position, self.message)
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Str(String),
    Word(String),
    Op(&'static str),
    LParen,
    RParen,
    Comma,
}

fn lex(src: &str) -> Result<Vec<(usize, Tok)>, ParseError> {
    let chars: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |position: usize, message: String| ParseError {
        position,
        message,
        missing_function: false,
    };
    while i < chars.len() {
        let c = chars[i];
        let start = i;
        if c.is_whitespace() {
            i += 1;
            continue;
        }
        if c == '\'' || c == '"' {
            let quote = c;
            let mut s = String::new();
            i += 1;
            loop {
                match chars.get(i) {
                    None => return Err(err(start, "unterminated string literal".into())),
                    Some('\\') if chars.get(i + 1) == Some(&quote) => {
                        s.push(quote);
                        i += 2;
                    }
                    Some(&ch) if ch == quote => {
                        i += 1;
                        break;
                    }
                    Some(&ch) => {
                        s.push(ch);
                        i += 1;
                    }
                }
            }
            out.push((start, Tok::Str(s)));
            continue;
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            if word.bytes().all(|b| b.is_ascii_digit()) {
                let n = word
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n <= 2_147_483_648)
                    .ok_or_else(|| {
                        err(
                            start,
                            format!("integer literal {word} is out of the 32-bit range"),
                        )
                    })?;
                out.push((start, Tok::Int(n)));
            } else {
                out.push((start, Tok::Word(word)));
            }
            continue;
        }
        let two: String = chars[i..(i + 2).min(chars.len())].iter().collect();
        let op: Option<&'static str> = match two.as_str() {
            "!=" => Some("!="),
            "<>" => Some("<>"),
            "<=" => Some("<="),
            ">=" => Some(">="),
            _ => None,
        };
        if let Some(op) = op {
            out.push((start, Tok::Op(op)));
            i += 2;
            continue;
        }
        let tok = match c {
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => Tok::Op("="),
            '<' => Tok::Op("<"),
            '>' => Tok::Op(">"),
            '+' => Tok::Op("+"),
            '-' => Tok::Op("-"),
            '*' => Tok::Op("*"),
            '/' => Tok::Op("/"),
            '%' => Tok::Op("%"),
            other => return Err(err(start, format!("unexpected character {other:?}"))),
        };
        out.push((start, tok));
        i += 1;
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinOp {
    And,
    Or,
    Xor,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Func {
    Abs,
    Length,
    Concat,
    ConcatWs,
    Lower,
    Upper,
    Trim,
    Left,
    Right,
    Substring,
    Int,
    Bool,
    String,
    IsInt,
    IsBool,
    IsString,
}

impl Func {
    fn lookup(name: &str, arity: usize) -> Result<Func, String> {
        let upper = name.to_ascii_uppercase();
        let (f, ok) = match upper.as_str() {
            "ABS" => (Func::Abs, arity == 1),
            "LENGTH" => (Func::Length, arity == 1),
            "CONCAT" => (Func::Concat, true),
            "CONCAT_WS" => (Func::ConcatWs, arity >= 1),
            "LOWER" => (Func::Lower, arity == 1),
            "UPPER" => (Func::Upper, arity == 1),
            "TRIM" => (Func::Trim, arity == 1),
            "LEFT" => (Func::Left, arity == 2),
            "RIGHT" => (Func::Right, arity == 2),
            "SUBSTRING" => (Func::Substring, arity == 2 || arity == 3),
            "INT" => (Func::Int, arity == 1),
            "BOOL" => (Func::Bool, arity == 1),
            "STRING" => (Func::String, arity == 1),
            "IS_INT" => (Func::IsInt, arity == 1),
            "IS_BOOL" => (Func::IsBool, arity == 1),
            "IS_STRING" => (Func::IsString, arity == 1),
            _ => return Err(format!("unknown function {name}")),
        };
        if ok {
            Ok(f)
        } else {
            Err(format!(
                "function {upper} does not take {arity} argument(s)"
            ))
        }
    }
}

/// One token of a compiled LIKE pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LikeTok {
    Lit(char),
    One,
    Many,
}

pub fn compile_like(p: &str) -> Vec<LikeTok> {
    let mut out = Vec::new();
    let mut it = p.chars().peekable();
    while let Some(c) = it.next() {
        match c {
            '\\' if matches!(it.peek(), Some('%') | Some('_')) => {
                if let Some(n) = it.next() {
                    out.push(LikeTok::Lit(n));
                }
            }
            '%' => {
                if out.last() != Some(&LikeTok::Many) {
                    out.push(LikeTok::Many)
                }
            }
            '_' => out.push(LikeTok::One),
            other => out.push(LikeTok::Lit(other)),
        }
    }
    out
}

#[derive(Debug, Clone)]
pub enum Expr {
    Bool(bool),
    Int(i32),
    Str(String),
    Attr(String),
    Exists(String),
    Not(Box<Expr>),
    Neg(Box<Expr>),
    Like {
        expr: Box<Expr>,
        pattern: Vec<LikeTok>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        set: Vec<Expr>,
        negated: bool,
    },
    Bin {
        op: BinOp,
        l: Box<Expr>,
        r: Box<Expr>,
    },
    Call {
        func: Func,
        args: Vec<Expr>,
    },
}

impl Expr {
    pub fn required_equalities(&self, out: &mut Vec<(String, String)>) {
        match self {
            Expr::Bin {
                op: BinOp::And,
                l,
                r,
            } => {
                l.required_equalities(out);
                r.required_equalities(out);
            }
            Expr::Bin {
                op: BinOp::Eq,
                l,
                r,
            } => {
                if let (Expr::Attr(a), Expr::Str(s)) | (Expr::Str(s), Expr::Attr(a)) =
                    (l.as_ref(), r.as_ref())
                {
                    out.push((a.clone(), s.clone()));
                }
            }
            _ => {}
        }
    }
}

/// Deepest nesting of parentheses, unary operators and calls an expression may have: bounds
/// the parser's and the evaluator's recursion.
const MAX_DEPTH: usize = 256;

struct Parser {
    toks: Vec<(usize, Tok)>,
    pos: usize,
    len: usize,
    depth: usize,
}

fn kw(t: Option<&Tok>, k: &str) -> bool {
    matches!(t, Some(Tok::Word(w)) if w.eq_ignore_ascii_case(k))
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|(_, t)| t)
    }

    fn at(&self) -> usize {
        self.toks.get(self.pos).map(|(p, _)| *p).unwrap_or(self.len)
    }

    fn err(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            position: self.at(),
            message: message.into(),
            missing_function: false,
        }
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|(_, t)| t.clone());
        self.pos += 1;
        t
    }

    fn logic(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("expression nested deeper than {MAX_DEPTH} levels")));
        }
        let r = self.logic_inner();
        self.depth -= 1;
        r
    }

    fn logic_inner(&mut self) -> Result<Expr, ParseError> {
        let l = self.comparison()?;
        let op = if kw(self.peek(), "AND") {
            BinOp::And
        } else if kw(self.peek(), "OR") {
            BinOp::Or
        } else if kw(self.peek(), "XOR") {
            BinOp::Xor
        } else {
            return Ok(l);
        };
        self.pos += 1;
        let r = self.logic()?;
        Ok(Expr::Bin {
            op,
            l: Box::new(l),
            r: Box::new(r),
        })
    }

    fn comparison(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.additive()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("=")) => BinOp::Eq,
                Some(Tok::Op("!=")) | Some(Tok::Op("<>")) => BinOp::Ne,
                Some(Tok::Op("<")) => BinOp::Lt,
                Some(Tok::Op("<=")) => BinOp::Le,
                Some(Tok::Op(">")) => BinOp::Gt,
                Some(Tok::Op(">=")) => BinOp::Ge,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.additive()?;
            l = Expr::Bin {
                op,
                l: Box::new(l),
                r: Box::new(r),
            };
        }
    }

    fn additive(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.multiplicative()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("+")) => BinOp::Add,
                Some(Tok::Op("-")) => BinOp::Sub,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.multiplicative()?;
            l = Expr::Bin {
                op,
                l: Box::new(l),
                r: Box::new(r),
            };
        }
    }

    fn multiplicative(&mut self) -> Result<Expr, ParseError> {
        let mut l = self.postfix()?;
        loop {
            let op = match self.peek() {
                Some(Tok::Op("*")) => BinOp::Mul,
                Some(Tok::Op("/")) => BinOp::Div,
                Some(Tok::Op("%")) => BinOp::Mod,
                _ => return Ok(l),
            };
            self.pos += 1;
            let r = self.postfix()?;
            l = Expr::Bin {
                op,
                l: Box::new(l),
                r: Box::new(r),
            };
        }
    }

    fn postfix(&mut self) -> Result<Expr, ParseError> {
        let mut e = self.unary()?;
        loop {
            let negated = kw(self.peek(), "NOT")
                && (kw(self.toks.get(self.pos + 1).map(|t| &t.1), "LIKE")
                    || kw(self.toks.get(self.pos + 1).map(|t| &t.1), "IN"));
            if negated {
                self.pos += 1;
            }
            if kw(self.peek(), "LIKE") {
                self.pos += 1;
                match self.next() {
                    Some(Tok::Str(p)) => {
                        e = Expr::Like {
                            expr: Box::new(e),
                            pattern: compile_like(&p),
                            negated,
                        };
                    }
                    _ => {
                        self.pos -= 1;
                        return Err(self.err("LIKE needs a string literal pattern"));
                    }
                }
            } else if kw(self.peek(), "IN") {
                self.pos += 1;
                if self.next() != Some(Tok::LParen) {
                    self.pos -= 1;
                    return Err(self.err("IN needs a parenthesised list"));
                }
                let mut set = vec![self.logic()?];
                loop {
                    match self.next() {
                        Some(Tok::Comma) => set.push(self.logic()?),
                        Some(Tok::RParen) => break,
                        _ => {
                            self.pos -= 1;
                            return Err(self.err("expected ',' or ')' in the IN list"));
                        }
                    }
                }
                e = Expr::In {
                    expr: Box::new(e),
                    set,
                    negated,
                };
            } else {
                return Ok(e);
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, ParseError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err(format!("expression nested deeper than {MAX_DEPTH} levels")));
        }
        let r = self.unary_inner();
        self.depth -= 1;
        r
    }

    fn unary_inner(&mut self) -> Result<Expr, ParseError> {
        if kw(self.peek(), "NOT") {
            self.pos += 1;
            return Ok(Expr::Not(Box::new(self.unary()?)));
        }
        if self.peek() == Some(&Tok::Op("-")) {
            self.pos += 1;
            if let Some(Tok::Int(n)) = self.peek() {
                let n = *n;
                self.pos += 1;
                return Ok(Expr::Int(
                    i32::try_from(-n).map_err(|_| self.err("integer out of range"))?,
                ));
            }
            return Ok(Expr::Neg(Box::new(self.unary()?)));
        }
        if kw(self.peek(), "EXISTS") {
            self.pos += 1;
            return match self.next() {
                Some(Tok::Word(w)) => Ok(Expr::Exists(attr_name(&w).map_err(|m| {
                    self.pos -= 1;
                    self.err(m)
                })?)),
                _ => {
                    self.pos -= 1;
                    Err(self.err("EXISTS needs an attribute name"))
                }
            };
        }
        self.primary()
    }

    fn primary(&mut self) -> Result<Expr, ParseError> {
        let start = self.at();
        match self.next() {
            Some(Tok::Int(n)) => Ok(Expr::Int(i32::try_from(n).map_err(|_| ParseError {
                position: start,
                message: "integer literal is out of the 32-bit range".into(),
                missing_function: false,
            })?)),
            Some(Tok::Str(s)) => Ok(Expr::Str(s)),
            Some(Tok::LParen) => {
                let e = self.logic()?;
                if self.next() != Some(Tok::RParen) {
                    self.pos -= 1;
                    return Err(self.err("expected ')'"));
                }
                Ok(e)
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("TRUE") => Ok(Expr::Bool(true)),
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("FALSE") => Ok(Expr::Bool(false)),
            Some(Tok::Word(w)) if self.peek() == Some(&Tok::LParen) => {
                self.pos += 1;
                let mut args = Vec::new();
                if self.peek() == Some(&Tok::RParen) {
                    self.pos += 1;
                } else {
                    loop {
                        args.push(self.logic()?);
                        match self.next() {
                            Some(Tok::Comma) => continue,
                            Some(Tok::RParen) => break,
                            _ => {
                                self.pos -= 1;
                                return Err(self.err("expected ',' or ')' in the argument list"));
                            }
                        }
                    }
                }
                if !w.bytes().all(|b| b.is_ascii_alphabetic() || b == b'_') {
                    return Err(ParseError {
                        position: start,
                        message: format!("{w:?} is not a function name"),
                        missing_function: false,
                    });
                }
                let func = Func::lookup(&w, args.len()).map_err(|message| ParseError {
                    position: start,
                    message,
                    missing_function: true,
                })?;
                Ok(Expr::Call { func, args })
            }
            Some(Tok::Word(w)) => {
                let reserved = ["AND", "OR", "XOR", "NOT", "LIKE", "IN", "EXISTS"];
                if reserved.iter().any(|r| w.eq_ignore_ascii_case(r)) {
                    return Err(ParseError {
                        position: start,
                        message: format!("unexpected keyword {w}"),
                        missing_function: false,
                    });
                }
                attr_name(&w).map(Expr::Attr).map_err(|message| ParseError {
                    position: start,
                    message,
                    missing_function: false,
                })
            }
            Some(t) => Err(ParseError {
                position: start,
                message: format!("unexpected {t:?}"),
                missing_function: false,
            }),
            None => Err(self.err("unexpected end of expression")),
        }
    }
}

fn attr_name(w: &str) -> Result<String, String> {
    let lower = w.to_ascii_lowercase();
    if lower
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        Ok(lower)
    } else {
        Err(format!(
            "{w:?} is not an attribute name (letters and digits only)"
        ))
    }
}

pub fn parse(src: &str) -> Result<Expr, ParseError> {
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        len: src.chars().count(),
        depth: 0,
    };
    if p.toks.is_empty() {
        return Err(p.err("empty expression"));
    }
    let e = p.logic()?;
    if p.pos < p.toks.len() {
        return Err(p.err("unexpected trailing input"));
    }
    Ok(e)
}
