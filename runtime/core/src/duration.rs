//! ISO-8601 durations as Knative's DeliverySpec writes them (`PT0.2S`, `PT30S`, `P1DT2H`).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written in ISO-8601 (`PnDTnHnMn.nS`; weeks allowed, years and months are not,
/// since their length varies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsoDuration(pub Duration);

impl IsoDuration {
    pub fn parse(s: &str) -> Option<Self> {
        let rest = s.strip_prefix('P')?;
        if rest.is_empty() {
            return None;
        }
        let (date, time) = match rest.split_once('T') {
            Some((d, t)) if !t.is_empty() => (d, Some(t)),
            Some(_) => return None,
            None => (rest, None),
        };
        let mut nanos: u128 = 0;
        nanos = nanos.checked_add(parse_part(date, &[('W', 604_800), ('D', 86_400)])?)?;
        if let Some(t) = time {
            nanos = nanos.checked_add(parse_part(t, &[('H', 3600), ('M', 60), ('S', 1)])?)?;
        }
        let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
        Some(IsoDuration(Duration::new(
            secs,
            (nanos % 1_000_000_000) as u32,
        )))
    }
}

/// Parses `nU nU ...` with units in the given order; only the last may have a fraction.
fn parse_part(s: &str, units: &[(char, u64)]) -> Option<u128> {
    let mut total: u128 = 0;
    let mut rest = s;
    let mut next_unit = 0;
    while !rest.is_empty() {
        let end = rest.find(|c: char| c.is_ascii_alphabetic())?;
        let (num, tail) = rest.split_at(end);
        let unit = tail.chars().next()?;
        let idx = units[next_unit..].iter().position(|(u, _)| *u == unit)? + next_unit;
        next_unit = idx + 1;
        let mult = units[idx].1 as u128 * 1_000_000_000;
        let (int, frac) = match num.split_once(['.', ',']) {
            Some((i, f)) if !f.is_empty() && f.len() <= 9 => (i, f),
            Some(_) => return None,
            None => (num, ""),
        };
        if int.is_empty()
            || !int.bytes().all(|b| b.is_ascii_digit())
            || !frac.bytes().all(|b| b.is_ascii_digit())
        {
            return None;
        }
        total = total.checked_add(int.parse::<u128>().ok()?.checked_mul(mult)?)?;
        if !frac.is_empty() {
            let scale = 10u128.pow(frac.len() as u32);
            total = total.checked_add(frac.parse::<u128>().ok()? * mult / scale)?;
        }
        rest = &tail[1..];
        if !frac.is_empty() && !rest.is_empty() {
            return None;
        }
    }
    Some(total)
}

impl fmt::Display for IsoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            write!(f, "PT{}S", d.as_secs())
        } else {
            let frac = format!("{:09}", d.subsec_nanos());
            write!(f, "PT{}.{}S", d.as_secs(), frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for IsoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IsoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        IsoDuration::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid ISO-8601 duration {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_knative_style_durations() {
        assert_eq!(
            IsoDuration::parse("PT0.2S").unwrap().0,
            Duration::from_millis(200)
        );
        assert_eq!(
            IsoDuration::parse("PT30S").unwrap().0,
            Duration::from_secs(30)
        );
        assert_eq!(
            IsoDuration::parse("P1DT1H1M1S").unwrap().0,
            Duration::from_secs(90061)
        );
        assert_eq!(
            IsoDuration::parse("PT1.5M").unwrap().0,
            Duration::from_secs(90)
        );
    }

    #[test]
    fn rejects_malformed_durations() {
        for bad in [
            "5 s", "PT", "P", "PT1S2M", "P1Y", "PT.5S", "PT1.S", "T1S", "PT-1S", "PT1.5M2S",
        ] {
            assert!(IsoDuration::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["PT0.2S", "PT30S", "PT0.001S"] {
            assert_eq!(IsoDuration::parse(s).unwrap().to_string(), s);
        }
    }
}
