//! The contract every inbox store keeps, run against memory and a real
//! redis-server: gap-free numbering per user (also with two logic nodes
//! numbering one user at once), the newest `max` kept, replay after a
//! sequence number, and numbering that restarts once an inbox expired.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imcloud_logic::{InboxLimits, InboxStore, MemoryInbox, RedisStore};
use imcloud_testkit::{RedisServer, eventually};

const LIMITS: InboxLimits = InboxLimits {
    max: 5,
    ttl: Duration::from_secs(2),
};

fn seqs(since: &imcloud_logic::Since) -> Vec<u64> {
    since.messages.iter().map(|kept| kept.seq).collect()
}

async fn contract(inbox: Arc<dyn InboxStore>) {
    let body = |text: &'static str| Bytes::from_static(text.as_bytes());
    // Each user has numbering of its own; one push numbers every user.
    assert_eq!(
        inbox.store(&[1, 2], 1000, &body("a")).await.expect("store"),
        [1, 1]
    );
    assert_eq!(
        inbox.store(&[1], 1001, &body("b:c")).await.expect("store"),
        [2]
    );
    let one = inbox.since(1, 0).await.expect("since");
    assert_eq!((one.last, one.oldest), (2, 1));
    assert_eq!(seqs(&one), [1, 2]);
    assert_eq!(one.messages[1].op, 1001);
    assert_eq!(&one.messages[1].body[..], b"b:c");
    assert_eq!(seqs(&inbox.since(1, 1).await.expect("since")), [2]);
    assert!(inbox.since(1, 2).await.expect("since").messages.is_empty());

    // Only the newest `max` (5) are kept; the numbering goes on.
    for _ in 0..6 {
        inbox.store(&[1], 1000, &body("x")).await.expect("store");
    }
    let one = inbox.since(1, 0).await.expect("since");
    assert_eq!((one.last, one.oldest), (8, 4));
    assert_eq!(seqs(&one), [4, 5, 6, 7, 8]);

    // Nobody: nothing kept, nothing numbered.
    assert_eq!(
        inbox.since(99, 0).await.expect("since"),
        imcloud_logic::Since::default()
    );

    // An inbox not written for its TTL expires with its counter.
    eventually("the inbox expiring", async || {
        inbox.since(2, 0).await.expect("since").last == 0
    })
    .await;
    assert_eq!(
        inbox
            .store(&[2], 1000, &body("again"))
            .await
            .expect("store"),
        [1]
    );
}

#[tokio::test]
async fn the_memory_inbox_keeps_the_contract() {
    contract(Arc::new(MemoryInbox::new(LIMITS))).await;
}

fn redis_inbox(redis: &RedisServer, prefix: &str) -> RedisStore {
    RedisStore::new(
        &redis.url,
        prefix,
        LIMITS.ttl,
        LIMITS.ttl,
        Duration::from_secs(1),
    )
    .expect("store")
    .with_inbox(LIMITS)
}

#[tokio::test]
async fn the_redis_inbox_keeps_the_contract() {
    let redis = RedisServer::start();
    contract(Arc::new(redis_inbox(&redis, "c:"))).await;
}

/// Two logic nodes numbering one user at once: every number once, no gap.
#[tokio::test]
async fn two_logic_nodes_number_one_user_without_gaps() {
    let redis = RedisServer::start();
    let (a, b) = (
        Arc::new(redis_inbox(&redis, "g:")),
        Arc::new(redis_inbox(&redis, "g:")),
    );
    let body = Bytes::from_static(b"m");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let inbox = if i % 2 == 0 { a.clone() } else { b.clone() };
            let body = body.clone();
            tokio::spawn(async move { inbox.store(&[7], 1000, &body).await.expect("store")[0] })
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.expect("task"));
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=100).collect::<Vec<u64>>());
}
