//! Subscribes to topic `orders` as a member of consumer group `example-audit`, printing and
//! acknowledging each event. Stop and restart evmesh meanwhile: the subscriber reconnects and
//! nothing is lost.
//!
//! ```sh
//! cargo run --release -p evmesh -- serve              # in another terminal
//! cargo run -p evmesh-sdk --example subscribe
//! cargo run -p evmesh-sdk --example publish           # in a third one
//! ```

use evmesh_sdk::{AttributesReader, ClientId, Subscriber, SubscriberConfig};
use futures_util::StreamExt;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cfg = SubscriberConfig::new(
        "127.0.0.1:10000",
        "example-audit",
        "orders",
        ClientId::new("example-audit"),
    );
    let mut subscriber = Subscriber::connect(cfg).await?;
    println!("listening on orders (Ctrl-C to stop)");
    while let Some(delivery) = subscriber.next().await {
        println!("{} {}", delivery.event.id(), delivery.event.ty());
        delivery.ack().await?;
    }
    Ok(())
}
