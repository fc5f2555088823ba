//! Request-reply: a responder answers requests on topic `quotes`; a requester asks three times,
//! over TCP and over HTTP, and prints each reply.
//!
//! ```sh
//! cargo run --release -p evmesh -- serve              # in another terminal
//! cargo run -p evmesh-sdk --example request_reply
//! ```

use evmesh_sdk::cloudevents::{EventBuilder, EventBuilderV10};
use evmesh_sdk::{AttributesReader, ClientId, Publisher, Subscriber, SubscriberConfig};
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = SubscriberConfig::new(
        "127.0.0.1:10000",
        "example-quoters",
        "quotes",
        ClientId::new("example-quoter"),
    )
    .requests();
    let mut responder = Subscriber::connect(cfg).await?;
    tokio::spawn(async move {
        while let Some(request) = responder.next().await {
            let reply = EventBuilderV10::new()
                .id(format!("quote-for-{}", request.event.id()))
                .source("/example/quoter")
                .ty("com.example.quote")
                .data("application/json", serde_json::json!({"price": 42}))
                .build();
            match reply {
                Ok(reply) => {
                    if let Err(e) = request.reply(reply).await {
                        eprintln!("replying failed: {e}");
                    }
                }
                Err(e) => eprintln!("building the reply failed: {e}"),
            }
        }
    });
    let tcp = Publisher::tcp("127.0.0.1:10000", ClientId::new("example-buyer")).await?;
    let http = Publisher::http("http://127.0.0.1:10105")?;
    for (i, requester) in [&tcp, &http, &tcp].into_iter().enumerate() {
        let ask = EventBuilderV10::new()
            .id(format!("ask-{i}"))
            .source("/example/buyer")
            .ty("com.example.quote.requested")
            .build()?;
        let reply = requester
            .request("quotes", &ask, Duration::from_secs(5))
            .await?;
        println!("{} -> {}", ask.id(), reply.id());
    }
    Ok(())
}
