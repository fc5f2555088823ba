//! Names of subscriptions, sources and topics: what they may contain, because they become
//! folder names, Kafka topic and group names.

/// Subscription and source names: 1-128 of `a-z A-Z 0-9 . _ -`, not `.` or `..` (names become
/// folder and topic names).
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 128 {
        return Err("must be 1 to 128 characters".into());
    }
    if name == "." || name == ".." {
        return Err(format!("{name:?} is not a valid name"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "{name:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Topic names follow Kafka's rules: 1-249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`; names
/// starting with `__` are evmesh's own.
pub fn validate_topic(topic: &str) -> Result<(), String> {
    validate_external_topic(topic)?;
    if topic.starts_with("__") {
        return Err(format!(
            "topic {topic:?}: names starting with \"__\" are reserved for evmesh"
        ));
    }
    Ok(())
}

/// A topic name by Kafka's rules alone (a topic of another system that evmesh reads or
/// writes directly, where `__` is not reserved).
pub fn validate_external_topic(topic: &str) -> Result<(), String> {
    if topic.is_empty() || topic.len() > 249 {
        return Err("a topic name must be 1 to 249 characters".into());
    }
    if topic == "." || topic == ".." {
        return Err(format!("{topic:?} is not a valid topic name"));
    }
    if !topic
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "topic {topic:?} may only contain letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}
