//! RocketMQ's names and evmesh's: RocketMQ topics and groups take letters, digits, `_`, `-`,
//! `%` and `|` (at most 127 characters); evmesh names also take `.`. evmesh names are carried
//! over with an escape that keeps them apart: `_` becomes `__` and `.` becomes `_d`, so
//! `orders.v1` is `orders_dv1` and `order_created` is `order__created`. (`%` is avoided: RocketMQ
//! reads `namespace%topic` and `%RETRY%group` in it.)

/// RocketMQ's longest topic name.
pub const MAX_LEN: usize = 127;

/// A topic or group name as RocketMQ accepts it.
pub fn validate_resource(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_LEN {
        return Err(format!(
            "{name:?}: RocketMQ names are 1 to {MAX_LEN} characters"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-%|".contains(&b))
    {
        return Err(format!(
            "{name:?}: RocketMQ names may only contain letters, digits, '_', '-', '%' and '|'"
        ));
    }
    Ok(())
}

/// `prefix` followed by the escaped evmesh name; an error when RocketMQ would refuse it.
pub fn escaped(prefix: &str, name: &str) -> Result<String, String> {
    let mut out = String::with_capacity(prefix.len() + name.len() + 4);
    out.push_str(prefix);
    for c in name.chars() {
        match c {
            '_' => out.push_str("__"),
            '.' => out.push_str("_d"),
            c => out.push(c),
        }
    }
    validate_resource(&out).map(|()| out)
}

/// The evmesh name a RocketMQ name stands for, if it has `prefix` and a valid escape.
pub fn unescaped(prefix: &str, rocketmq: &str) -> Option<String> {
    let rest = rocketmq.strip_prefix(prefix)?;
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c == '_' {
            match chars.next()? {
                '_' => out.push('_'),
                'd' => out.push('.'),
                _ => return None,
            }
        } else {
            out.push(c);
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_keeps_names_apart_and_round_trips() {
        let names = [
            "a.b", "a_db", "a_b", "a__b", "__dlq.s", "em.g.t", "x-y", "A1",
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let e = escaped("evmesh_", n).unwrap();
            assert!(validate_resource(&e).is_ok(), "{e}");
            assert!(seen.insert(e.clone()), "{n} collides as {e}");
            assert_eq!(unescaped("evmesh_", &e).as_deref(), Some(n));
        }
        assert_eq!(escaped("", "orders.v1").unwrap(), "orders_dv1");
        assert_eq!(unescaped("evmesh_", "other_topic"), None);
        assert_eq!(unescaped("evmesh_", "evmesh_bad_x"), None);
    }

    #[test]
    fn names_rocketmq_refuses_are_errors() {
        assert!(escaped("p_", &"x".repeat(130)).is_err());
        assert!(validate_resource("a.b").is_err());
        assert!(validate_resource("").is_err());
        assert!(validate_resource("%RETRY%g").is_ok());
    }
}
