//! Subscriptions as the runtime sees them: config compiled into filter chains.

use evmesh_core::config::{DeliverySpec, SubscriptionConfig};
use evmesh_core::filter::Filter;
use evmesh_core::Event;
use evmesh_filter_attributes::Compiled;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    #[error("subscription {name:?}: {message}")]
    Invalid { name: String, message: String },
}

/// Where a subscription came from, which decides who may change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Declared in the config file: changed by editing the file.
    Config,
    /// Created through the admin API: persisted in the store.
    Api,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Config => "config",
            Origin::Api => "api",
        }
    }
}

/// A subscription ready to run: its config, its compiled filters and effective delivery.
pub struct Route {
    pub config: SubscriptionConfig,
    pub origin: Origin,
    pub filter: Arc<dyn Filter>,
    pub delivery: DeliverySpec,
}

impl Route {
    /// Compiles a subscription; `default_delivery` is the top-level `delivery:` block, which a
    /// subscription's own block replaces as a whole (Knative's precedence).
    pub fn compile(
        config: SubscriptionConfig,
        origin: Origin,
        default_delivery: Option<&DeliverySpec>,
    ) -> Result<Route, RouterError> {
        let delivery = config
            .delivery
            .clone()
            .or_else(|| default_delivery.cloned())
            .unwrap_or_default();
        let filter: Arc<dyn Filter> = Arc::new(Compiled::compile_list(&config.filters));
        Ok(Route {
            config,
            origin,
            filter,
            delivery,
        })
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    pub fn matches(&self, e: &Event) -> bool {
        self.filter.matches(e)
    }

    /// Why an event does not match, or `None` when it does.
    pub fn explain(&self, e: &Event) -> Option<String> {
        self.filter.explain(e, "")
    }

    /// The topic replies go to.
    pub fn reply_topic(&self) -> &str {
        self.config.reply.as_deref().unwrap_or(&self.config.topic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use evmesh_core::config::{SinkConfig, WebhookSinkConfig};

    fn sub(delivery: Option<DeliverySpec>) -> SubscriptionConfig {
        SubscriptionConfig {
            name: "s".into(),
            topic: "t".into(),
            filters: Vec::new(),
            sink: SinkConfig::Webhook(WebhookSinkConfig {
                url: "http://x/".into(),
                mode: Default::default(),
                headers: Default::default(),
            }),
            delivery,
            reply: None,
            max_in_flight: 1,
            ordering: Default::default(),
            start: Default::default(),
        }
    }

    #[test]
    fn subscription_delivery_replaces_the_default_as_a_whole() {
        let default = DeliverySpec {
            retry: 3,
            ..Default::default()
        };
        let own = DeliverySpec {
            retry: 7,
            ..Default::default()
        };
        let r = Route::compile(sub(None), Origin::Config, Some(&default)).unwrap();
        assert_eq!(r.delivery.retry, 3);
        let r = Route::compile(sub(Some(own)), Origin::Config, Some(&default)).unwrap();
        assert_eq!(r.delivery.retry, 7);
        let r = Route::compile(sub(None), Origin::Api, None).unwrap();
        assert_eq!(r.delivery.retry, 10);
        assert_eq!(r.reply_topic(), "t");
    }
}
