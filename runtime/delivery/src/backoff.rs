//! Backoff between attempts, with Knative's policies plus jitter.

use evmesh_core::config::{BackoffPolicy, DeliverySpec};
use std::time::Duration;

/// The wait after the `attempt`-th failed attempt (1-based): exponential is `delay * 2^(n-1)`,
/// linear is `delay * n`, both capped at `backoffMax`, then "equal jitter" (a random point in
/// the upper half) so that many failing deliveries do not retry in lockstep.
pub fn backoff_delay(spec: &DeliverySpec, attempt: u32) -> Duration {
    let base = spec.backoff_delay.0;
    let n = attempt.max(1);
    let raw = match spec.backoff_policy {
        BackoffPolicy::Exponential => {
            base.saturating_mul(1u32.checked_shl(n - 1).unwrap_or(u32::MAX))
        }
        BackoffPolicy::Linear => base.saturating_mul(n),
    };
    let capped = raw.min(spec.backoff_max.0);
    let half = capped / 2;
    half + half.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::duration::IsoDuration;

    fn spec(policy: BackoffPolicy) -> DeliverySpec {
        DeliverySpec {
            backoff_policy: policy,
            backoff_delay: IsoDuration(Duration::from_millis(100)),
            backoff_max: IsoDuration(Duration::from_secs(1)),
            ..Default::default()
        }
    }

    #[test]
    fn exponential_doubles_and_caps_with_jitter_in_upper_half() {
        let s = spec(BackoffPolicy::Exponential);
        for (attempt, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = backoff_delay(&s, attempt).as_millis() as u64;
            assert!(
                d >= full / 2 && d <= full,
                "attempt {attempt}: {d} not in [{}, {full}]",
                full / 2
            );
        }
    }

    #[test]
    fn linear_grows_by_the_delay() {
        let s = spec(BackoffPolicy::Linear);
        let d = backoff_delay(&s, 3).as_millis() as u64;
        assert!((150..=300).contains(&d), "{d}");
    }
}
