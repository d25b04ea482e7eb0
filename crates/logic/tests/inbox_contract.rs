//! The contract every inbox store keeps, run against memory and a real
//! redis-server: gap-free numbering per user (also with two logic nodes
//! numbering one user at once), the newest `max` kept, replay after a
//! sequence number, and numbering that restarts once an inbox expired.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use imcloud_logic::{Acked, InboxLimits, InboxStore, MemoryInbox, RedisStore, Unacked};
use imcloud_testkit::{RedisServer, eventually};

const LIMITS: InboxLimits = InboxLimits {
    max: 5,
    ttl: Duration::from_secs(2),
    ack_timeout: None,
    id_window: Duration::from_secs(60),
};

/// With an offline webhook: messages are due 300 ms after they are stored.
const TRACKED: InboxLimits = InboxLimits {
    max: 5,
    ttl: Duration::from_secs(30),
    ack_timeout: Some(Duration::from_millis(300)),
    id_window: Duration::from_secs(60),
};

const LEASE: Duration = Duration::from_secs(30);

fn seqs(since: &imcloud_logic::Since) -> Vec<u64> {
    since.messages.iter().map(|kept| kept.seq).collect()
}

async fn contract(inbox: Arc<dyn InboxStore>) {
    let body = |text: &'static str| Bytes::from_static(text.as_bytes());
    // Each user has numbering of its own; one push numbers every user.
    assert_eq!(
        inbox
            .store(&[1, 2], 1000, &body("a"), None)
            .await
            .expect("store"),
        [1, 1]
    );
    assert_eq!(
        inbox
            .store(&[1], 1001, &body("b:c"), None)
            .await
            .expect("store"),
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
        inbox
            .store(&[1], 1000, &body("x"), None)
            .await
            .expect("store");
    }
    let one = inbox.since(1, 0).await.expect("since");
    assert_eq!((one.last, one.oldest), (8, 4));
    assert_eq!(seqs(&one), [4, 5, 6, 7, 8]);

    // The same push stored again under its id: the numbers of the first
    // time, for the users it had; a user it did not have is numbered.
    let once = body("once");
    let first = inbox.store(&[1, 2], 1000, &once, Some("p1")).await;
    assert_eq!(first.expect("store"), [9, 2]);
    let again = inbox.store(&[2, 1, 3], 1000, &once, Some("p1")).await;
    assert_eq!(again.expect("store"), [2, 9, 1]);
    let one = inbox.since(1, 8).await.expect("since");
    assert_eq!((one.last, seqs(&one)), (9, vec![9]), "kept once");

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
            .store(&[2], 1000, &body("again"), None)
            .await
            .expect("store"),
        [1]
    );
}

/// Acks are cumulative and bounded by the latest number; a message not
/// acknowledged within the ack timeout is claimed once (leased), and comes
/// back after a failed call's retry delay, never after it was settled.
async fn ack_contract(inbox: Arc<dyn InboxStore>) {
    let body = Bytes::from_static(b"m");
    for _ in 0..3 {
        inbox.store(&[1], 1000, &body, None).await.expect("store");
    }
    assert_eq!(
        inbox.ack(1, 5).await.expect("ack"),
        Acked::AboveLatest { last: 3 }
    );
    assert_eq!(inbox.ack(1, 2).await.expect("ack"), Acked::Recorded);
    assert_eq!(inbox.ack(1, 1).await.expect("ack"), Acked::Recorded);
    assert_eq!(inbox.ack(99, 0).await.expect("ack"), Acked::Recorded);
    assert_eq!(
        inbox.ack(99, 1).await.expect("ack"),
        Acked::AboveLatest { last: 0 }
    );
    assert!(
        inbox
            .claim_unacked(10, LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "nothing is due before the ack timeout"
    );

    // Only the unacknowledged one comes due, once while it is leased.
    let claimed = claim_some(&inbox).await;
    assert_eq!(claimed.len(), 1, "{claimed:?}");
    assert_eq!((claimed[0].mid, claimed[0].message.seq), (1, 3));
    assert_eq!(claimed[0].attempt, 0);
    assert!(
        inbox
            .claim_unacked(10, LEASE)
            .await
            .expect("claim")
            .is_empty()
    );

    // A failed call: due again after the retry delay, one attempt more.
    inbox
        .settle(&claimed[0], Some(Duration::from_millis(50)))
        .await
        .expect("settle");
    let again = claim_some(&inbox).await;
    assert_eq!((again[0].message.seq, again[0].attempt), (3, 1));

    // Settled: never again, while a later message comes due as usual.
    inbox.settle(&again[0], None).await.expect("settle");
    inbox.store(&[2], 1000, &body, None).await.expect("store");
    let later = claim_some(&inbox).await;
    assert_eq!((later[0].mid, later.len()), (2, 1), "{later:?}");

    // Acknowledged after it was stored, before it came due: never claimed.
    inbox.store(&[3], 1000, &body, None).await.expect("store");
    inbox.ack(3, 1).await.expect("ack");
    inbox.store(&[4], 1000, &body, None).await.expect("store");
    let last = claim_some(&inbox).await;
    assert_eq!((last[0].mid, last.len()), (4, 1), "{last:?}");
}

async fn claim_some(inbox: &Arc<dyn InboxStore>) -> Vec<Unacked> {
    let mut claimed = Vec::new();
    eventually("a message coming due", async || {
        claimed = inbox.claim_unacked(10, LEASE).await.expect("claim");
        !claimed.is_empty()
    })
    .await;
    claimed
}

#[tokio::test]
async fn the_memory_inbox_keeps_the_contract() {
    contract(Arc::new(MemoryInbox::new(LIMITS))).await;
    ack_contract(Arc::new(MemoryInbox::new(TRACKED))).await;
}

fn redis_inbox(redis: &RedisServer, prefix: &str, limits: InboxLimits) -> RedisStore {
    RedisStore::new(
        &redis.url,
        prefix,
        limits.ttl,
        limits.ttl,
        Duration::from_secs(1),
    )
    .expect("store")
    .with_inbox(limits)
}

#[tokio::test]
async fn the_redis_inbox_keeps_the_contract() {
    let redis = RedisServer::start();
    contract(Arc::new(redis_inbox(&redis, "c:", LIMITS))).await;
    ack_contract(Arc::new(redis_inbox(&redis, "a:", TRACKED))).await;
}

/// Two logic nodes numbering one user at once: every number once, no gap.
#[tokio::test]
async fn two_logic_nodes_number_one_user_without_gaps() {
    let redis = RedisServer::start();
    let (a, b) = (
        Arc::new(redis_inbox(&redis, "g:", LIMITS)),
        Arc::new(redis_inbox(&redis, "g:", LIMITS)),
    );
    let body = Bytes::from_static(b"m");
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let inbox = if i % 2 == 0 { a.clone() } else { b.clone() };
            let body = body.clone();
            tokio::spawn(
                async move { inbox.store(&[7], 1000, &body, None).await.expect("store")[0] },
            )
        })
        .collect();
    let mut numbers = Vec::new();
    for task in tasks {
        numbers.push(task.await.expect("task"));
    }
    numbers.sort_unstable();
    assert_eq!(numbers, (1..=100).collect::<Vec<u64>>());
}
