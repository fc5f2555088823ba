//! Hot reload: SIGHUP or a change of the config file applies the new subscriptions without a
//! restart, losing and duplicating nothing in flight; a broken file is refused and the running
//! configuration stays.
#![allow(clippy::unwrap_used)]

use evmesh_test_kit::*;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

fn config(subs: &[(&str, &str)]) -> String {
    let mut s = String::from("subscriptions:\n");
    for (name, url) in subs {
        s.push_str(&webhook_sub(name, "t", url, ""));
    }
    s
}

async fn reloaded(ev: &Evmesh, n: usize) -> bool {
    wait_until(WAIT, || {
        ev.log().matches("configuration reloaded").count() >= n
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_and_file_changes_apply_subscription_changes_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let (a1, a2, gone, added) = (
        Receiver::start(Behaviour::default()).await,
        Receiver::start(Behaviour::default()).await,
        Receiver::start(Behaviour::default()).await,
        Receiver::start(Behaviour::default()).await,
    );
    let ev = Evmesh::start(
        &dir.path().join("d"),
        &config(&[("a", &a1.url()), ("gone", &gone.url())]),
    );
    let file = ev.config_path();
    let c = client();
    assert_eq!(publish(&c, &ev, "t", "before", &[]).await, 202);
    assert!(wait_until(WAIT, || a1.count() == 1 && gone.count() == 1).await);

    // "a" moves to another URL, "gone" goes, "added" comes; events keep arriving meanwhile.
    let publishing = {
        let (c, url) = (c.clone(), ev.url("/topics/t"));
        tokio::spawn(async move {
            for i in 0..200 {
                let id = format!("during{i}");
                let (st, _) = send(
                    &c,
                    "POST",
                    &url,
                    &[
                        ("ce-specversion", "1.0"),
                        ("ce-id", &id),
                        ("ce-source", "/t"),
                        ("ce-type", "t"),
                    ],
                    "",
                )
                .await;
                assert_eq!(st, 202);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&file, config(&[("a", &a2.url()), ("added", &added.url())])).unwrap();
    ev.hangup();
    assert!(reloaded(&ev, 1).await, "{}", ev.log());
    publishing.await.unwrap();
    assert!(
        ev.log()
            .contains(r#"added=["added"] changed=["a"] removed=["gone"]"#),
        "{}",
        ev.log()
    );

    // Every event went to "a" exactly once: before the change to the old URL, after it to the
    // new one (the subscription went on from its cursor).
    let ids = |rx: &Receiver| rx.ids();
    assert!(
        wait_until(WAIT, || a1.count() + a2.count() == 201).await,
        "{} + {}",
        a1.count(),
        a2.count()
    );
    let mut all: Vec<String> = ids(&a1).into_iter().chain(ids(&a2)).collect();
    all.sort();
    let n = all.len();
    all.dedup();
    assert_eq!(all.len(), n, "an event was delivered twice");
    assert_eq!(n, 201);
    assert!(a2.count() > 0);
    let gone_before = gone.count();
    assert_eq!(publish(&c, &ev, "t", "after", &[]).await, 202);
    assert!(wait_until(WAIT, || a2.ids().contains(&"after".to_owned())).await);
    assert!(wait_until(WAIT, || added.ids().contains(&"after".to_owned())).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        gone.count(),
        gone_before,
        "a removed subscription delivers nothing"
    );
    let (st, _) = send(&c, "GET", &ev.admin_url("/subscriptions/gone"), &[], "").await;
    assert_eq!(st, 404);

    // A broken file is refused with its errors; the running configuration stays.
    std::fs::write(
        &file,
        "subscriptions:\n  - name: a\n    topic: t\n    sink: { type: webhook, url: \"ftp://x\" }\n",
    )
    .unwrap();
    ev.hangup();
    assert!(
        wait_until(WAIT, || ev
            .log()
            .contains("the new configuration was refused"))
        .await,
        "{}",
        ev.log()
    );
    assert!(
        ev.log()
            .contains("reload refused: subscriptions[0].sink.url"),
        "{}",
        ev.log()
    );
    assert_eq!(publish(&c, &ev, "t", "still", &[]).await, 202);
    assert!(wait_until(WAIT, || a2.ids().contains(&"still".to_owned())).await);

    // A change of the file alone (no signal) is noticed.
    std::fs::write(&file, config(&[("a", &a1.url())])).unwrap();
    assert!(reloaded(&ev, 2).await, "{}", ev.log());
    assert_eq!(publish(&c, &ev, "t", "last", &[]).await, 202);
    assert!(wait_until(WAIT, || a1.ids().contains(&"last".to_owned())).await);
    assert!(!a2.ids().contains(&"last".to_owned()));
}
