//! Publishes ten events to topic `orders`, over TCP and over HTTP.
//!
//! ```sh
//! cargo run --release -p evmesh -- serve              # in another terminal
//! cargo run -p evmesh-sdk --example publish
//! ```

use evmesh_sdk::cloudevents::{EventBuilder, EventBuilderV10};
use evmesh_sdk::{ClientId, Publisher};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let tcp = Publisher::tcp("127.0.0.1:10000", ClientId::new("example-shop")).await?;
    let http = Publisher::http("http://127.0.0.1:10105")?;
    for i in 0..10 {
        let event = EventBuilderV10::new()
            .id(format!("order-{i}"))
            .source("/example/shop")
            .ty("com.example.order.created")
            .data("application/json", serde_json::json!({"order": i}))
            .build()?;
        let publisher = if i % 2 == 0 { &tcp } else { &http };
        publisher.publish("orders", &event).await?;
        println!("published order-{i} (stored durably)");
    }
    Ok(())
}
