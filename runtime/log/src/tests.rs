use super::*;
use crate::segment::{segment_name, FRAME, MAGIC};
use evmesh_core::{Data, ExtValue};
use evmesh_store::{CursorState, StateDir, StoredEvent};
use proptest::prelude::*;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

fn opts(dir: &Path, segment_bytes: u64) -> LogOptions {
    LogOptions {
        data_dir: dir.to_owned(),
        fsync: FsyncPolicy::Always,
        fsync_interval: Duration::from_millis(5),
        segment_bytes,
        retention: None,
        max_record_bytes: MAX_RECORD_BYTES,
    }
}

fn state(dir: &Path) -> StateDir {
    StateDir::open(dir).unwrap()
}

/// The log in `dir`, with the state store beside it (as the binary opens them).
fn open(dir: &Path, segment_bytes: u64) -> EmbeddedLog {
    EmbeddedLog::open(opts(dir, segment_bytes), &state(dir)).unwrap()
}

fn ev(i: usize) -> Event {
    let mut e = Event::new(format!("id-{i}"), "/test", "t");
    e.set_extension("seq", ExtValue::Integer(i as i64));
    e.data = Some(Data::binary(vec![b'x'; 100]));
    e
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn read_all(s: &EmbeddedLog, topic: &str) -> Vec<StoredEvent> {
    let mut out = Vec::new();
    let mut from = 0;
    loop {
        let b = s.read_topic(topic, from, 1000).unwrap();
        if b.events.is_empty() {
            return out;
        }
        from = b.next;
        out.extend(b.events);
    }
}

#[test]
fn appends_are_read_back_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = open(dir.path(), 4096);
        for chunk in 0..10 {
            let events: Vec<Event> = (chunk * 10..chunk * 10 + 10).map(ev).collect();
            let ack = s.append("orders", &events).await.unwrap();
            assert_eq!(ack.first, chunk as u64 * 10);
        }
        let all = read_all(&s, "orders");
        assert_eq!(all.len(), 100);
        for (i, se) in all.iter().enumerate() {
            assert_eq!(se.offset, i as u64);
            assert_eq!(*se.event, ev(i));
        }
        s.close().await;
    });
    let segs = fs::read_dir(dir.path().join("topics/orders"))
        .unwrap()
        .count();
    assert!(segs > 2, "expected several segments, got {segs}");
}

/// Sealed segments keep one position in `SPARSE`: reads at any offset and of any length,
/// across segment boundaries, give exactly the records asked for, before and after a reopen
/// (which rebuilds the index from the files).
#[test]
fn reads_at_any_offset_of_sealed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let n = 700;
    let check = |s: &EmbeddedLog| {
        for from in [0, 1, 31, 32, 33, 63, 64, 65, 100, 257, 500, 698, 699] {
            for max in [1, 2, 31, 32, 33, 100, 1000] {
                let b = s.read_topic("orders", from, max).unwrap();
                assert!(!b.events.is_empty(), "from {from} max {max}: nothing read");
                for (k, se) in b.events.iter().enumerate() {
                    let i = from as usize + k;
                    assert_eq!(se.offset, i as u64, "from {from} max {max}");
                    assert_eq!(*se.event, ev(i), "from {from} max {max}");
                }
                assert_eq!(b.next, from + b.events.len() as u64);
                assert!(b.events.len() <= max);
            }
        }
    };
    rt().block_on(async {
        // About 40 records a segment: most segments are sealed and sparse.
        let s = open(dir.path(), 8192);
        for chunk in 0..n / 10 {
            let events: Vec<Event> = (chunk * 10..chunk * 10 + 10).map(ev).collect();
            s.append("orders", &events).await.unwrap();
        }
        check(&s);
        assert_eq!(read_all(&s, "orders").len(), n);
        s.close().await;
    });
    rt().block_on(async {
        let s = open(dir.path(), 8192);
        check(&s);
        s.close().await;
    });
}

/// One read returns about 1 MiB however many records were asked for (and at least one
/// record, even a larger one), so reading ahead over big events stays bounded.
#[test]
fn a_read_is_bounded_in_bytes() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = open(dir.path(), 64 * 1024 * 1024);
        let big = |i: usize, size: usize| {
            let mut e = ev(i);
            e.data = Some(Data::binary(vec![b'y'; size]));
            e
        };
        let events: Vec<Event> = (0..40).map(|i| big(i, 100 * 1024)).collect();
        s.append("big", &events).await.unwrap();
        s.append("big", &[big(40, 3 * 1024 * 1024)]).await.unwrap();
        let b = s.read_topic("big", 0, 1000).unwrap();
        assert!(
            (9..=12).contains(&b.events.len()),
            "read {} records of 100 KiB",
            b.events.len()
        );
        assert_eq!(b.next, b.events.len() as u64);
        let mut from = b.next;
        let mut seen = b.events.len();
        while seen < 41 {
            let b = s.read_topic("big", from, 1000).unwrap();
            assert!(!b.events.is_empty(), "no progress at {from}");
            seen += b.events.len();
            from = b.next;
        }
        assert_eq!(seen, 41);
        let last = s.read_topic("big", 40, 1000).unwrap();
        assert_eq!(last.events.len(), 1, "a record over the cap is read alone");
        s.close().await;
    });
}

#[test]
fn reopening_continues_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let r = rt();
    r.block_on(async {
        let s = open(dir.path(), 1 << 20);
        s.append("t", &[ev(0), ev(1)]).await.unwrap();
        s.close().await;
        let s = open(dir.path(), 1 << 20);
        assert_eq!(*s.watch_end("t").borrow(), 2);
        let ack = s.append("t", &[ev(2)]).await.unwrap();
        assert_eq!(ack.first, 2);
        assert_eq!(read_all(&s, "t").len(), 3);
        s.close().await;
    });
}

#[test]
fn torn_tail_is_cut_off_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let r = rt();
    r.block_on(async {
        let s = open(dir.path(), 1 << 20);
        s.append("t", &[ev(0), ev(1)]).await.unwrap();
        s.close().await;
    });
    let seg = dir.path().join("topics/t").join(segment_name(0));
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 5, 6]).unwrap(); // a frame promising 200 bytes
    drop(f);
    r.block_on(async {
        let s = open(dir.path(), 1 << 20);
        assert!(s.problems().is_empty());
        assert_eq!(s.append("t", &[ev(2)]).await.unwrap().first, 2);
        let all = read_all(&s, "t");
        assert_eq!(
            all.iter().map(|e| e.offset).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        s.close().await;
    });
}

#[test]
fn corrupt_record_quarantines_segment_and_fsck_reports_it() {
    let dir = tempfile::tempdir().unwrap();
    let r = rt();
    r.block_on(async {
        let s = open(dir.path(), 4096);
        for i in 0..60 {
            s.append("t", &[ev(i)]).await.unwrap();
        }
        s.close().await;
    });
    // Flip a byte inside the first record's payload of the first segment.
    let seg = dir.path().join("topics/t").join(segment_name(0));
    let mut bytes = fs::read(&seg).unwrap();
    bytes[MAGIC.len() + FRAME + 3] ^= 0xff;
    fs::write(&seg, &bytes).unwrap();

    let report = fsck(dir.path()).unwrap();
    assert_eq!(report.corrupt.len(), 1, "{report:?}");
    assert_eq!(report.corrupt[0].byte_offset, MAGIC.len() as u64);
    assert!(!report.is_clean());

    r.block_on(async {
        let s = open(dir.path(), 4096);
        let p = s.problems();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].record, 0);
        let all = read_all(&s, "t");
        assert!(!all.is_empty() && all.len() < 60);
        assert!(all[0].offset > 0, "reads skip the quarantined range");
        let next = s.append("t", &[ev(99)]).await.unwrap().first;
        assert_eq!(
            next, 60,
            "the segment after the quarantined one bounds the offsets"
        );
        s.close().await;
    });
    let report = fsck(dir.path()).unwrap();
    assert_eq!(report.quarantined.len(), 1);
}

#[test]
fn concurrent_appends_share_commits_and_get_distinct_offsets() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = open(dir.path(), 1 << 20);
        let mut tasks = Vec::new();
        for i in 0..200 {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.append("t", &[ev(i)]).await.unwrap().first
            }));
        }
        let mut offsets = Vec::new();
        for t in tasks {
            offsets.push(t.await.unwrap());
        }
        offsets.sort();
        assert_eq!(offsets, (0..200).collect::<Vec<u64>>());
        s.close().await;
    });
}

#[test]
fn interval_fsync_hands_rounds_to_its_thread_and_close_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    let o = LogOptions {
        fsync: FsyncPolicy::Interval,
        ..opts(dir.path(), 4096)
    };
    rt().block_on(async {
        let s = EmbeddedLog::open(o.clone(), &state(dir.path())).unwrap();
        // Ten topics (one syncfs a round) and one (an fdatasync), small segments (sealed ones
        // in the rounds), across many 5 ms intervals.
        for round in 0..20 {
            for t in 0..10 {
                s.append(&format!("t{t}"), &[ev(round)]).await.unwrap();
            }
            s.append("solo", &[ev(round), ev(round + 100)])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        s.close().await;
    });
    let s = EmbeddedLog::open(o, &state(dir.path())).unwrap();
    for t in 0..10 {
        let got = read_all(&s, &format!("t{t}"));
        assert_eq!(got.len(), 20, "t{t}");
        assert!(got.iter().enumerate().all(|(i, e)| e.offset == i as u64));
    }
    assert_eq!(read_all(&s, "solo").len(), 40);
}

#[test]
fn garbage_collection_keeps_what_a_cursor_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let s = open(dir.path(), 4096);
        for i in 0..100 {
            s.append("t", &[ev(i)]).await.unwrap();
        }
        assert_eq!(s.collect_garbage("t", 0).unwrap(), 0);
        let removed = s.collect_garbage("t", 50).unwrap();
        assert!(removed > 0);
        let all = read_all(&s, "t");
        assert!(all[0].offset <= 50, "offset 50 must still be readable");
        assert_eq!(all.last().unwrap().offset, 99);
        s.close().await;
    });
}

#[test]
fn cursors_persist_in_the_state_store() {
    let dir = tempfile::tempdir().unwrap();
    let s = state(dir.path());
    let mut c = CursorState {
        committed: 42,
        ..Default::default()
    };
    c.attempts.insert(43, 3);
    s.save_cursor("sub", "t", &c).unwrap();
    assert_eq!(s.load_cursor("sub", "t").unwrap(), Some(c));
    assert_eq!(s.load_cursor("other", "t").unwrap(), None);
    s.delete_consumer("sub").unwrap();
    assert_eq!(s.load_cursor("sub", "t").unwrap(), None);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]
    #[test]
    fn log_matches_a_vec_model(batches in proptest::collection::vec(1usize..20, 1..15), reopen_at in 0usize..15) {
        let dir = tempfile::tempdir().unwrap();
        let r = rt();
        let mut model: Vec<Event> = Vec::new();
        let mut s = open(dir.path(), 4096);
        for (k, n) in batches.iter().enumerate() {
            if k == reopen_at {
                r.block_on(s.close());
                s = open(dir.path(), 4096);
            }
            let events: Vec<Event> = (model.len()..model.len() + n).map(ev).collect();
            let ack = r.block_on(s.append("m", &events)).unwrap();
            prop_assert_eq!(ack.first, model.len() as u64);
            model.extend(events);
        }
        let got: Vec<Event> = read_all(&s, "m").into_iter().map(|e| (*e.event).clone()).collect();
        prop_assert_eq!(got, model);
        r.block_on(s.close());
    }
}

#[tokio::test]
async fn new_offsets_start_past_a_cursor_left_ahead_of_the_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 1 << 20);
        store.append("t", &[ev(0), ev(1)]).await.unwrap();
        // A subscription finished 10 events, of which the power loss kept only 2 on disk.
        state(dir.path())
            .save_cursor(
                "s",
                "t",
                &CursorState {
                    committed: 10,
                    ..Default::default()
                },
            )
            .unwrap();
        state(dir.path())
            .save_cursor(
                "s",
                "gone",
                &CursorState {
                    committed: 5,
                    ..Default::default()
                },
            )
            .unwrap();
        store.close().await;
    }
    let store = open(dir.path(), 1 << 20);
    assert_eq!(*store.watch_end("t").borrow(), 10);
    let ack = store.append("t", &[ev(2)]).await.unwrap();
    assert_eq!(ack.first, 10, "new events must not reuse finished offsets");
    let ack = store.append("gone", &[ev(3)]).await.unwrap();
    assert_eq!(ack.first, 5);
    // A reader in the gap skips it instead of spinning on it.
    let b = store.read("t", 0, 2, 10).await.unwrap();
    assert_eq!(b.events.len(), 1);
    assert_eq!(b.events[0].offset, 10);
    assert_eq!(b.next, 11);
    store.close().await;
    // And after another restart the raised offsets are the real ones.
    let store = open(dir.path(), 1 << 20);
    assert_eq!(*store.watch_end("t").borrow(), 11);
}

#[tokio::test]
async fn a_deleted_topic_starts_again_from_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1 << 20);
    store.append("__dlq.s", &[ev(0), ev(1)]).await.unwrap();
    store.delete_topic("__dlq.s").await.unwrap();
    assert!(!dir.path().join("topics/__dlq.s").exists());
    let b = store.read("__dlq.s", 0, 0, 10).await.unwrap();
    assert!(b.events.is_empty());
    assert_eq!(b.next, 0);
    let ack = store.append("__dlq.s", &[ev(2)]).await.unwrap();
    assert_eq!(ack.first, 0);
    assert!(store.delete_topic("..").await.is_err());
    assert!(store.append("..", &[ev(3)]).await.is_err());
    assert!(dir.path().join("topics").is_dir());
}

#[tokio::test]
async fn events_over_the_configured_limit_are_refused_as_permanent() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = opts(dir.path(), 1 << 20);
    o.max_record_bytes = 64;
    let store = EmbeddedLog::open(o, &state(dir.path())).unwrap();
    let err = store.append("t", &[ev(0)]).await.unwrap_err();
    assert!(err.is_permanent(), "{err}");
}
